"""Forward passes with OpenVINO on the CPU (or an Intel GPU), from models converted once per fold and cached.

Each fold network is converted (:mod:`.ov_convert`) for a static (batch, channels, *patch) input, checked against
torch, cached on disk (:mod:`.ov_cache`) and compiled for the chosen precision. Mirroring and fold averaging happen
around the compiled models exactly as :class:`~tilewise.engine.backends.torch_backend.TorchBackend` does them.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TilewiseError
from .mirrors import average_folds_and_mirrors, mirror_combinations
from .ov_cache import NOT_CACHED, CacheKey, ModelCache, StaleEntry, network_digest
from .ov_convert import agreement_error, candidates, check_tile, convert

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def resolve_openvino_precision(requested: str, capabilities: Sequence[str],
                               device: str = "CPU") -> tuple[str, str | None]:
    """The precision OpenVINO computes in for ``requested`` (fp32, fp16, bf16 or reduced) on a device with the given
    ``OPTIMIZATION_CAPABILITIES``, and a note when it differs from what was asked for."""
    if requested == "fp32":
        return "fp32", None
    native = [p for p in ("bf16", "fp16") if _CAPABILITY[p] in capabilities]
    if device.upper().startswith("GPU"):  # Intel GPUs compute reduced precision in fp16 only
        native = [p for p in native if p == "fp16"]
    if requested == "reduced":
        return (native[0] if native else "fp32"), None
    if requested not in _CAPABILITY:
        raise TilewiseError("--precision", f"unknown precision '{requested}' (use fp32, fp16, bf16 or reduced)")
    if requested in native:
        return requested, None
    chosen = native[0] if native else "fp32"
    return chosen, f"{requested} is not native on OpenVINO {device} here: it computes in {chosen} instead"


class _CompiledFold:
    """One fold's compiled model with a static batch size; any number of tiles is run in chunks of it."""

    def __init__(self, compiled: Any, batch_size: int) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.batch_size = batch_size

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, inputs.shape[0], self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            count = chunk.shape[0]
            if count < self.batch_size:  # a short final batch: pad with zeros, keep only the real tiles' logits
                padding = np.zeros((self.batch_size - count, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            result = self.request.infer({0: np.ascontiguousarray(chunk)}, share_inputs=True)
            outputs.append(result[0][:count])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


class OpenVINOBackend:
    """The fold networks converted to OpenVINO; see :class:`~tilewise.engine.backends.ForwardBackend`.

    ``input_shape`` is the static (batch, channels, *patch) the models are compiled for; ``precision`` may be fp32,
    fp16, bf16 or reduced and is resolved for ``ov_device`` ('CPU', 'GPU', 'GPU.1', ...). After construction,
    :attr:`cache_events` says per fold whether its model came from the cache, was converted, or was rebuilt.
    """

    name = "openvino"
    variable_batch = False  # compiled for a static batch: a smaller one is padded to it and saves no memory

    def __init__(
        self,
        networks: list[nn.Module],
        mirror_axes: tuple[int, ...],
        input_shape: tuple[int, ...],
        precision: str,
        ov_device: str = "CPU",
        cache: ModelCache | None = None,
    ) -> None:
        import openvino

        self.core = openvino.Core()
        self.ov_device = ov_device
        self.device = torch.device("cpu")
        self.mirrors = mirror_combinations(mirror_axes)
        self.input_shape = tuple(int(s) for s in input_shape)
        capabilities = self.core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES")
        self.precision, note = resolve_openvino_precision(precision, capabilities, ov_device)
        self.notes: list[str] = [note] if note else []
        self.cache = cache if cache is not None else ModelCache()
        self.cache_events: list[str] = []
        self.conversions = 0
        self.folds = [self._prepare_fold(index, network) for index, network in enumerate(networks)]

    @property
    def passes_per_tile(self) -> int:
        """Forward passes per tile: (1 + mirrors) x folds."""
        return (1 + len(self.mirrors)) * len(self.folds)

    def describe(self) -> str:
        """E.g. 'openvino CPU bf16'."""
        return f"openvino {self.ov_device} {self.precision}"

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits averaged over folds and mirrors, float32, on the CPU."""
        array = inputs.detach().cpu().float().numpy()
        total = average_folds_and_mirrors(self.folds, array, self.mirrors, np.flip)  # folds make inputs contiguous
        return torch.from_numpy(np.ascontiguousarray(total, dtype=np.float32))

    # ---- models -----------------------------------------------------------------------------------
    def _prepare_fold(self, index: int, network: nn.Module) -> _CompiledFold:
        """The fold compiled from its cached model; converted, checked and cached when the entry is missing or bad."""
        import openvino

        key = CacheKey(network_digest(network), self.input_shape, self.precision, openvino.__version__)
        fold, reason = self._from_cache(key)
        if fold is not None:
            self.cache_events.append("cached")
            return fold
        fresh = reason == NOT_CACHED
        self.cache_events.append("converted" if fresh else f"rebuilt: {reason}")
        started = time.perf_counter()
        fold, cached = self._convert_checked(index, network, key)
        took = f"converted to OpenVINO in {time.perf_counter() - started:.1f}s"
        if cached:
            self.notes.append(f"fold {index}: {took} (first run; cached for later runs)" if fresh else
                              f"fold {index}: cached OpenVINO model rebuilt ({reason}); {took}")
        return fold

    def _from_cache(self, key: CacheKey) -> tuple[_CompiledFold | None, str]:
        """The compiled cached model, or None and why there is none that can be trusted."""
        try:
            return self._compile(self._checked(self.cache.load(key, self.core))), ""
        except StaleEntry as why:
            return None, str(why)
        except Exception as error:  # noqa: BLE001 - whatever OpenVINO says, a cached model that fails is rebuilt
            return None, f"OpenVINO could not compile it ({_first_line(error)})"

    def _convert_checked(self, index: int, network: nn.Module, key: CacheKey) -> tuple[_CompiledFold, bool]:
        """Convert ``network`` (each of its :func:`candidates` in turn until one gives torch's logits on a random
        tile), cache and compile it. Returns the compiled fold and whether it was cached."""
        tile = check_tile(self.input_shape)
        with torch.no_grad():
            reference = network(tile).float()
        problems = []
        for recipe, candidate in candidates(network):
            model = self._convert(index, candidate)
            self.conversions += 1
            stored = self._store(index, key, model)
            try:
                fold = self._compile(stored if stored is not None else model)
            except Exception as error:  # noqa: BLE001
                raise TilewiseError("openvino", f"cannot compile fold {index} for {self.ov_device} "
                                                f"({_first_line(error)}); try --backend torch") from None
            problem = agreement_error(torch.from_numpy(fold(tile.numpy())), reference, self.precision)
            if problem is None:
                if problems:
                    self.notes.append(f"fold {index}: {'; '.join(problems)}; the {recipe} conversion is used")
                return fold, stored is not None
            problems.append(f"{recipe}: {problem}")
        self.cache.discard(key)
        raise TilewiseError("openvino", f"fold {index} converts to a model that disagrees with torch "
                                        f"({'; '.join(problems)}); use --backend torch")

    def _store(self, index: int, key: CacheKey, model: Any) -> Any:
        """Cache ``model`` and return it as later runs will load it; None (with a note) when it cannot be cached."""
        try:
            self.cache.store(key, model)
            return self.cache.load(key, self.core)
        except (OSError, RuntimeError, StaleEntry) as error:  # caching is best effort: run the converted model
            self.notes.append(f"fold {index}: could not cache the converted model in {self.cache.root} ({error})")
            return None

    def _convert(self, index: int, network: nn.Module) -> Any:
        try:
            return convert(network, self.input_shape)
        except Exception as error:  # noqa: BLE001 - the converter raises many kinds
            raise TilewiseError("openvino", f"cannot convert fold {index}'s network ({_first_line(error)}); "
                                            "try --backend torch") from None

    def _checked(self, model: Any) -> Any:
        """``model`` if it has one input of :attr:`input_shape` and one output of the same batch and patch size."""
        shapes = [port.get_partial_shape() for port in (*model.inputs, *model.outputs)]
        if len(shapes) != 2 or not all(shape.is_static for shape in shapes):
            raise StaleEntry("model has other inputs or outputs than expected")
        given, output = (tuple(shape.to_shape()) for shape in shapes)
        if given != self.input_shape or output[:1] + output[2:] != given[:1] + given[2:]:
            raise StaleEntry(f"model shapes {given} -> {output} do not fit {self.input_shape}")
        return model

    def _compile(self, model: Any) -> _CompiledFold:
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.ov_device.upper() == "CPU":
            config["INFERENCE_NUM_THREADS"] = torch.get_num_threads()
        return _CompiledFold(self.core.compile_model(model, self.ov_device, config), self.input_shape[0])

"""Forward passes with OpenVINO on the CPU (or an Intel GPU), from models converted once per fold and cached.

Each fold network is converted (:mod:`.ov_convert`) for a static (batch, channels, *patch) input, checked against
torch on one tile, only then cached on disk (:mod:`.ov_cache`), and compiled for the chosen precision. A cached
model is checked against torch the same way the first time it is used on this machine (:func:`machine_identity`;
the entry records it); one that disagrees is discarded and rebuilt. Mirroring and fold averaging happen around the
compiled models exactly as :class:`~tilewise.engine.backends.torch_backend.TorchBackend` does them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import Cancelled, TilewiseError
from ..events import CACHED, CONVERTED, CONVERTING, PREPARING, LoadReporter, check_cancelled
from ..runtime.parallel import run_abandonable
from .mirrors import average_folds_and_mirrors, mirror_combinations
from .ov_cache import (
    NOT_CACHED,
    CacheKey,
    ModelCache,
    Staged,
    StaleEntry,
    VerifiedEntries,
    network_digest,
)
from .ov_convert import agreement_error, candidates, check_tile, convert

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
"""OpenVINO's INFERENCE_PRECISION_HINT for each of our precisions."""
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
VERIFIED = VerifiedEntries()
"""Cache entries checked against torch in this process (the viewer may load a model on two threads at once)."""


def _torch_logits(network: nn.Module, tile: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return network(tile).float()


def machine_identity(core: Any, ov_device: str) -> str:
    """What a compiled model's numbers depend on besides its files and precision: the OpenVINO version, the device
    and the instructions its kernels may use. A cache entry checked against torch under one identity is trusted
    under the same one without a new check."""
    import openvino

    facts = [openvino.__version__, platform.machine(), ov_device.upper(),
             str(core.get_property(ov_device, "FULL_DEVICE_NAME")),
             sorted(str(c) for c in core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES")),
             torch.backends.cpu.get_cpu_capability()]  # AVX2 or AVX-512 where a virtual CPU hides it from the name
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


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

    def lent(self, inputs: np.ndarray) -> np.ndarray:
        """As calling it, but where one run of the compiled batch holds every tile the logits are OpenVINO's own
        output buffer, valid only until this fold runs again (why: it saves a copy of a tile's logits, 1 GB for
        118 labels on a 160 x 128 x 112 tile)."""
        if inputs.shape[0] != self.batch_size:
            return self(inputs)
        return self.request.infer({0: np.ascontiguousarray(inputs)}, share_inputs=True, share_outputs=True)[0]


class OpenVINOBackend:
    """The fold networks converted to OpenVINO; see :class:`~tilewise.engine.backends.ForwardBackend`.

    ``input_shape`` is the static (batch, channels, *patch) the models are compiled for; ``precision`` may be fp32,
    fp16, bf16 or reduced and is resolved for ``ov_device`` ('CPU', 'GPU', 'GPU.1', ...). After construction,
    :attr:`cache_events` says per fold whether its model came from the cache, was converted, or was rebuilt, and
    :attr:`convert_seconds` how long converting (and checking and caching) took over all folds: 0 when every fold came
    from the cache. ``on_load`` hears each fold's step ('preparing', then 'cached' or 'converting' and 'converted':
    :class:`~tilewise.engine.events.LoadEvent`).
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
        on_load: LoadReporter | None = None,
    ) -> None:
        import openvino

        self.core = openvino.Core()
        self.ov_device = ov_device
        self.device = torch.device("cpu")
        self.mirrors = mirror_combinations(mirror_axes)
        self.input_shape = tuple(int(s) for s in input_shape)
        capabilities = self.core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES")
        self.precision, note = resolve_openvino_precision(precision, capabilities, ov_device)
        self.machine = machine_identity(self.core, ov_device)
        self.notes: list[str] = [note] if note else []
        self.cache = cache if cache is not None else ModelCache()
        self.cache_events: list[str] = []
        self.conversions = 0
        self.convert_seconds = 0.0
        self.folds = []
        self._reporter = on_load or LoadReporter()
        self._fold_count = len(networks)
        for index, network in enumerate(networks):
            check_cancelled()  # converting a fold takes seconds: Cancel lands between folds
            self._report(index, PREPARING)
            self.folds.append(self._prepare_fold(index, network))

    @property
    def passes_per_tile(self) -> int:
        """Forward passes per tile: (1 + mirrors) x folds."""
        return (1 + len(self.mirrors)) * len(self.folds)

    def describe(self) -> str:
        """E.g. 'openvino CPU bf16'."""
        return f"openvino {self.ov_device} {self.precision}"

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits averaged over folds and mirrors, float32, on the CPU; without mirroring they may be OpenVINO's
        output buffer, overwritten by the next call."""
        array = inputs.detach().cpu().float().numpy()
        # without mirroring each fold runs once per call, so its logits may stay in OpenVINO's buffer until used
        folds = [fold.lent for fold in self.folds] if not self.mirrors else self.folds
        total = average_folds_and_mirrors(folds, array, self.mirrors, np.flip)  # folds make inputs contiguous
        return torch.from_numpy(np.ascontiguousarray(total, dtype=np.float32))

    # ---- models -----------------------------------------------------------------------------------
    def _prepare_fold(self, index: int, network: nn.Module) -> _CompiledFold:
        """The fold compiled from its cached model; converted, checked and cached when the entry is missing or bad."""
        import openvino

        key = CacheKey(network_digest(network), self.input_shape, self.precision, openvino.__version__)
        tile = check_tile(self.input_shape)
        reference = functools.cache(lambda: _torch_logits(network, tile))  # at most one torch pass per fold
        fold, reason = self._from_cache(key, tile, reference)
        if fold is not None:
            self.cache_events.append("cached")
            self._report(index, CACHED)
            return fold
        fresh = reason == NOT_CACHED
        self.cache_events.append("converted" if fresh else f"rebuilt: {reason}")
        self._report(index, CONVERTING, reason="" if fresh else reason)
        started = time.perf_counter()
        fold, cached = self._convert_checked(index, network, key, tile, reference)
        seconds = time.perf_counter() - started
        self.convert_seconds += seconds
        self._report(index, CONVERTED, fold_seconds=seconds)
        took = f"converted to OpenVINO in {seconds:.1f}s"
        if cached:
            self.notes.append(f"fold {index}: {took} (first run; cached for later runs)" if fresh else
                              f"fold {index}: cached OpenVINO model rebuilt ({reason}); {took}")
        return fold

    def _report(self, index: int, step: str, fold_seconds: float = 0.0, reason: str = "") -> None:
        """Tell :attr:`_reporter` that fold ``index`` (0-based) is at ``step``."""
        self._reporter.report(index + 1, self._fold_count, step, fold_seconds, reason, self.ov_device, self.precision)

    def _from_cache(self, key: CacheKey, tile: torch.Tensor,
                    reference: Callable[[], torch.Tensor]) -> tuple[_CompiledFold | None, str]:
        """The compiled cached model, or None and why there is none that can be trusted. An entry that has not agreed
        with torch on this machine (in this process, or as its record says) is checked on the check tile, as a
        conversion is; one that disagrees is discarded."""
        try:
            cached = self.cache.load(key, self.core)
            fold = self._compile(self._checked(cached.model))
        except StaleEntry as why:
            return None, str(why)
        except TilewiseError:
            raise  # a cache folder others may write is refused, not worked around
        except Exception as error:  # noqa: BLE001 - whatever OpenVINO says, a cached model that fails is rebuilt
            return None, f"OpenVINO could not compile it ({_first_line(error)})"
        with VERIFIED.lock(cached.fingerprint):  # two threads loading one entry check it once
            agreed = VERIFIED.result(cached.fingerprint)
            if agreed is None and self.cache.verified_on(key, cached.fingerprint, self.machine):
                agreed = True  # these very files agreed with torch on this machine before: no torch pass needed
                VERIFIED.record(cached.fingerprint, True)
            if agreed is None:
                try:
                    problem = self._disagreement(fold, tile, reference)
                except Exception as error:  # noqa: BLE001 - a cached model that cannot run is rebuilt
                    problem = f"it fails to run ({_first_line(error)})"
                agreed = problem is None
                VERIFIED.record(cached.fingerprint, agreed)
                if agreed:
                    self.cache.record_verified(key, cached.fingerprint, self.machine)
                if not agreed:
                    self.cache.discard(key)
                    return None, f"it disagrees with torch on the check tile ({problem})"
        return (fold, "") if agreed else (None, "it disagreed with torch on the check tile earlier in this run")

    def _disagreement(self, fold: _CompiledFold, tile: torch.Tensor,
                      reference: Callable[[], torch.Tensor]) -> str | None:
        """Why ``fold`` cannot stand in for torch on the check tile; None when it can."""
        expected = reference()  # torch's pass first: its activations are freed before OpenVINO allocates its own
        return agreement_error(torch.from_numpy(fold(tile.numpy())), expected, self.precision)

    def _convert_checked(self, index: int, network: nn.Module, key: CacheKey, tile: torch.Tensor,
                         reference: Callable[[], torch.Tensor]) -> tuple[_CompiledFold, bool]:
        """Convert ``network`` (each of its :func:`candidates` in turn until one gives torch's logits on the check
        tile) and compile it; cache the one that agrees. Returns the compiled fold and whether it was cached."""
        problems = []
        for recipe, candidate, example in candidates(network, self.input_shape):
            check_cancelled()
            model = self._convert(index, candidate, example)
            self.conversions += 1
            check_cancelled()  # converting and compiling take seconds each: Cancel lands between the steps
            staged, unsaved = self._stage(key, model)
            try:
                try:  # the staged model is checked: exactly the bytes later runs will load
                    fold = self._compile(staged.cached.model if staged is not None else model)
                except Exception as error:  # noqa: BLE001
                    raise TilewiseError("openvino", f"cannot compile fold {index} for {self.ov_device} "
                                                    f"({_first_line(error)}); try --backend torch") from None
                check_cancelled()
                problem = self._disagreement(fold, tile, reference)
                if problem is None:
                    if staged is not None:
                        unsaved = self._commit(staged)  # stored only now that it agreed with torch
                    if unsaved:
                        self.notes.append(f"fold {index}: could not cache the converted model in {self.cache.root} "
                                          f"({unsaved})")
                    if problems:
                        self.notes.append(f"fold {index}: {'; '.join(problems)}; the {recipe} conversion is used")
                    return fold, not unsaved
            finally:
                if staged is not None:
                    self.cache.release(staged)
            problems.append(f"{recipe}: {problem}")
        self.cache.discard(key)
        raise TilewiseError("openvino", f"fold {index} converts to a model that disagrees with torch "
                                        f"({'; '.join(problems)}); use --backend torch")

    def _stage(self, key: CacheKey, model: Any) -> tuple[Staged | None, str]:
        """``model`` written for the cache and read back; None and why when it cannot be cached."""
        try:
            return self.cache.stage(key, model, self.core), ""
        except (OSError, RuntimeError, StaleEntry) as error:  # caching is best effort: run the converted model
            return None, str(error)

    def _commit(self, staged: Staged) -> str:
        """Store ``staged`` as its key's entry (it agreed with torch); why it could not be stored, or ''."""
        try:
            self.cache.commit(staged)
        except OSError as error:
            return str(error)
        VERIFIED.record(staged.cached.fingerprint, True)  # checked just now: no need to check it again in this run
        self.cache.record_verified(staged.key, staged.cached.fingerprint, self.machine)
        return ""

    def _convert(self, index: int, network: nn.Module, example: tuple[int, ...]) -> Any:
        try:  # a conversion takes seconds and cannot be interrupted: a cancel abandons it instead
            return run_abandonable(lambda: convert(network, self.input_shape, example))
        except Cancelled:
            raise
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
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.precision],
                                  "PERFORMANCE_HINT": "LATENCY"}
        if self.ov_device.upper() == "CPU":
            config["INFERENCE_NUM_THREADS"] = torch.get_num_threads()
        return _CompiledFold(self.core.compile_model(model, self.ov_device, config), self.input_shape[0])

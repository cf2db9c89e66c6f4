"""How long a run will take, before it starts: the sum of what each stage of the run will really cost.

A run loads the model (each fold's network, compiled for its engine), converts the folds OpenVINO has not cached
yet (seconds each, once per fold and precision), prepares the image, runs tiles x passes per tile forward passes and
writes the labels on the input grid. :func:`estimate_run` adds those stages up from :class:`StageCosts`: figures
measured on this machine (:func:`measure_first_fold` before the first run, :func:`learn_from_run` after every run)
or, until then, the conservative :data:`PRIORS` ranges, so an estimate that rests on a prior is a range.
The tile count comes from the image's shape and spacing (nnU-Net's resampling and sliding-window rules, without
touching the voxels); which conversions are pending comes from the OpenVINO cache (:func:`cached_folds`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from .backends.ov_cache import CacheKey, ModelCache, network_digest
from .backends.select import choose_backend
from .model.bundle import ModelBundle
from .predictor import Predictor, Result
from .preprocess.grid_shape import ModelGrid, network_grid_shape, nonzero_extent
from .presets import Preset, get_preset
from .runtime.devices import default_batch_size

__all__ = ["PRIORS", "Estimate", "FirstFold", "ModelGrid", "Span", "StageCosts", "cached_folds", "count_tiles",
           "estimate_run", "learn_from_run", "measure_first_fold", "network_grid_shape", "nonzero_extent",
           "passes_per_tile", "time_forward_pass", "with_priors"]


@dataclass(frozen=True)
class Span:
    """Seconds from ``low`` to ``high``: a range while it rests on a prior, one figure (low == high) once measured."""

    low: float
    high: float

    @classmethod
    def of(cls, seconds: float) -> Span:
        """A measured figure."""
        return cls(float(seconds), float(seconds))

    @property
    def mid(self) -> float:
        """The middle of the range: the figure to compare with a measured run."""
        return (self.low + self.high) / 2

    @property
    def measured(self) -> bool:
        """True for a single figure."""
        return self.high - self.low <= 1e-9 * max(1.0, abs(self.high))

    def __add__(self, other: Span) -> Span:
        return Span(self.low + other.low, self.high + other.high)

    def __mul__(self, factor: float) -> Span:
        return Span(self.low * factor, self.high * factor)

    __rmul__ = __mul__


@dataclass(frozen=True)
class StageCosts:
    """What each stage costs on this machine for one model, device, engine and precision."""

    seconds_per_pass: float
    """One forward pass of one tile, with the runner's work around it once a run measured it."""
    load_per_fold: Span
    """Loading one fold whose compiled model is cached: checkpoint, network, compile (and the check against torch
    the first time the model runs on this machine)."""
    convert_per_fold: Span
    """What a fold's first-use OpenVINO conversion adds to its load (convert, check, cache)."""
    preprocess_per_mvoxel: Span
    """Preparing the image, per million voxels of its nonzero box (what nnU-Net crops to)."""
    export_per_mvoxel: Span
    """Writing the labels on the input grid, per million voxels of that box."""

    @property
    def measured(self) -> bool:
        """True when no stage rests on a prior."""
        return all(getattr(self, f.name).measured for f in fields(self) if f.name != "seconds_per_pass")


PRIORS = StageCosts(
    seconds_per_pass=math.nan,  # always measured (:func:`measure_first_fold`) before anything is estimated
    load_per_fold=Span(0.2, 1.0),
    convert_per_fold=Span(5.0, 15.0),
    preprocess_per_mvoxel=Span(0.08, 0.3),
    export_per_mvoxel=Span(0.05, 0.25),
)
"""Conservative ranges, until a stage is measured here. Measured on the project's 2-core CPU with the demo model
and sample (nonzero box 160 x 188 x 152 = 4.6 M voxels), OpenVINO bf16: a cached fold loads in 0.4-0.5 s, a fold
converts in 6.9-10.1 s, preprocessing takes 0.6-0.8 s (0.13-0.17 s per M voxels), export 0.4-0.7 s (0.08-0.15)."""


def with_priors(seconds_per_pass: float) -> StageCosts:
    """:data:`PRIORS` with a measured time per pass."""
    return replace(PRIORS, seconds_per_pass=float(seconds_per_pass))


def count_tiles(grid: ModelGrid, grid_shape: Sequence[int], tile_step: float) -> int:
    """Tiles nnU-Net's sliding window places on ``grid_shape`` at ``tile_step``."""
    patch = grid.patch_size
    spatial = list(grid_shape[1:]) if len(patch) == 2 else list(grid_shape)
    tiles = math.prod(_steps(n, p, tile_step) for n, p in zip(spatial, patch))
    return tiles * (int(grid_shape[0]) if len(patch) == 2 else 1)


def _steps(size: int, patch: int, step: float) -> int:
    """nnU-Net's ``compute_steps_for_sliding_window`` count along one axis."""
    return math.ceil((size - patch) / (patch * step)) + 1 if size > patch else 1


def passes_per_tile(grid: ModelGrid, mirroring: bool, fold_count: int) -> int:
    """Forward passes per tile: (1 + mirror combinations) x folds, as the engine will run them."""
    return (2 ** len(grid.mirror_axes) if mirroring else 1) * fold_count


def time_forward_pass(predictor: Predictor, repeats: int = 2) -> float:
    """Seconds for one forward pass of one tile through ``predictor``'s backend (after one warm-up pass).

    Divided by the backend's passes per tile, so a predictor with several folds or mirrors still gives the time of
    a single pass.
    """
    bundle = predictor.bundle
    patch = bundle.patch_size
    inputs = torch.randn((predictor.settings.batch_size, bundle.num_input_channels, *patch), device=predictor.device)
    best = math.inf
    with torch.inference_mode():
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            predictor.backend(inputs)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize(predictor.device)
            if attempt:
                best = min(best, time.perf_counter() - started)
    return best / predictor.settings.batch_size / predictor.backend.passes_per_tile


@dataclass(frozen=True)
class Estimate:
    """Expected run time of one preset on one image: the stages it will really run, each a :class:`Span`."""

    tiles: int
    passes_per_tile: int
    conversions: int
    """Folds OpenVINO converts first (not cached yet at this precision)."""
    stages: dict[str, Span]
    """'load', 'convert', 'preprocess', 'sliding_window', 'export' (the :class:`Result` timing names)."""

    @property
    def total(self) -> Span:
        """All stages together."""
        return sum(self.stages.values(), Span(0.0, 0.0))

    @property
    def seconds(self) -> float:
        """The figure to compare with a measured run: the middle of :attr:`total`."""
        return self.total.mid

    @property
    def is_range(self) -> bool:
        """True while a stage rests on a prior (nothing measured for it on this machine yet)."""
        return not self.total.measured


def estimate_run(grid: ModelGrid, preset: Preset, fold_count: int, shape_zyx: Sequence[int],
                 spacing_zyx: Sequence[float], costs: StageCosts, conversions: int = 0,
                 loaded: bool = False) -> Estimate:
    """The estimate for ``preset`` with ``fold_count`` folds on an image of this shape and spacing (z, y, x):
    ``conversions`` folds still to convert for OpenVINO, ``loaded`` when the model is loaded already (the viewer
    keeps the last one), so neither loading nor conversion is paid."""
    tiles = count_tiles(grid, network_grid_shape(grid, shape_zyx, spacing_zyx), preset.tile_step)
    passes = passes_per_tile(grid, preset.mirroring, fold_count)
    mvoxels = math.prod(int(s) for s in shape_zyx) / 1e6
    none = Span(0.0, 0.0)
    stages = {
        "load": none if loaded else costs.load_per_fold * fold_count,
        "convert": none if loaded else costs.convert_per_fold * conversions,
        "preprocess": costs.preprocess_per_mvoxel * mvoxels,
        "sliding_window": Span.of(tiles * passes * costs.seconds_per_pass),
        "export": costs.export_per_mvoxel * mvoxels,
    }
    return Estimate(tiles, passes, 0 if loaded else conversions, stages)


def learn_from_run(costs: StageCosts, result: Result, fold_count: int, conversions: int, mvoxels: float,
                   loaded: bool = False) -> StageCosts:
    """``costs`` refined with what a finished run really took: ``fold_count`` folds, ``conversions`` of them
    converted first, on an image whose nonzero box has ``mvoxels`` million voxels; ``loaded`` when the run reused
    a loaded model (its load timing is the earlier load's, so it teaches nothing)."""
    timings = result.timings
    learned = costs
    if result.forward_passes > 0:  # a cascade's passes count both stages, and so do its sliding-window seconds
        window = sum(seconds for stage, seconds in timings.items() if stage.split(":")[-1] == "sliding_window")
        learned = replace(learned, seconds_per_pass=window / result.forward_passes)
    if mvoxels > 0:
        learned = replace(learned, preprocess_per_mvoxel=Span.of(timings.get("preprocess", 0.0) / mvoxels),
                          export_per_mvoxel=Span.of(timings.get("export", 0.0) / mvoxels))
    if not loaded and "load" in timings and fold_count > 0:
        if conversions == 0:
            learned = replace(learned, load_per_fold=Span.of(timings["load"] / fold_count))
        else:  # the folds loaded from the cache cost what one cached fold costs; the rest is conversion
            excess = max(timings["load"] - fold_count * costs.load_per_fold.mid, 0.0)
            learned = replace(learned, convert_per_fold=Span.of(excess / conversions))
    return learned


@dataclass(frozen=True)
class FirstFold:
    """What loading and running the model's first fold measured, before any run."""

    grid: ModelGrid
    seconds_per_pass: float
    load_per_fold: float
    """Seconds to load the fold with its compiled model cached."""
    convert_per_fold: float | None
    """Seconds its first-use OpenVINO conversion added; None when it was cached already (or not OpenVINO)."""

    def costs(self) -> StageCosts:
        """:data:`PRIORS` with these measurements."""
        measured = replace(with_priors(self.seconds_per_pass), load_per_fold=Span.of(self.load_per_fold))
        if self.convert_per_fold is not None:
            measured = replace(measured, convert_per_fold=Span.of(self.convert_per_fold))
        return measured


def _first_fold_predictor(model_dir: Path, precision: str, device: str, backend: str, trust: bool) -> Predictor:
    preset = get_preset("fast").with_overrides(precision=precision, mirroring=False, batch_size=0, backend=backend)
    return Predictor(model_dir, preset, device=device, trust=trust)


def measure_first_fold(model_dir: Path, precision: str, device: str = "auto", backend: str = "auto",
                       trust: bool = False) -> FirstFold:
    """Load the model's first fold at ``precision`` on ``device`` with ``backend`` as a run would (converting it for
    OpenVINO when it is not cached, so later runs find it cached) and time it: load, conversion, one forward pass.
    The first load in a process also pays one-off imports, which a run pays once and not per fold: the network is
    built once untimed before, and the fold loaded a second time for the load figure."""
    ModelBundle.load(model_dir, fold_count=1, trust=trust).build_networks()  # one-off imports, untimed
    predictor = _first_fold_predictor(model_dir, precision, device, backend, trust)
    converted = any(event != "cached" for event in predictor.backend.cache_events)
    grid, per_pass, first_load = ModelGrid.of(predictor.bundle), time_forward_pass(predictor), predictor.load_seconds
    del predictor
    load = _first_fold_predictor(model_dir, precision, device, backend, trust).load_seconds
    return FirstFold(grid, per_pass, load, max(first_load - load, 0.0) if converted else None)


def cached_folds(model_dir: Path, precisions: Iterable[str], device: str = "auto", backend: str = "auto",
                 trust: bool = False, cache: ModelCache | None = None) -> dict[str, frozenset[str]] | None:
    """Per precision (as a preset names it: fp32, bf16, fp16, reduced), the folds whose OpenVINO model for a run on
    ``device`` is cached already; None when the run will not use OpenVINO (nothing to convert). Loads every fold's
    checkpoint to hash its network (seconds for a large model): call it off the GUI thread."""
    choice = choose_backend(backend, device)
    if choice.name != "openvino":
        return None
    import openvino

    from .backends.openvino_backend import resolve_openvino_precision

    assert choice.openvino_device is not None
    capabilities = openvino.Core().get_property(choice.openvino_device, "OPTIMIZATION_CAPABILITIES")
    bundle = ModelBundle.load(model_dir, trust=trust)
    digests = {fold: network_digest(net) for fold, net in zip(bundle.folds, bundle.build_networks())}
    shape = (default_batch_size(choice.device), bundle.num_input_channels, *bundle.patch_size)
    cache = cache if cache is not None else ModelCache()
    found: dict[str, frozenset[str]] = {}
    for precision in precisions:
        resolved, _ = resolve_openvino_precision(precision, capabilities, choice.openvino_device)
        found[precision] = frozenset(fold for fold, digest in digests.items()
                                     if cache.has(CacheKey(digest, shape, resolved, openvino.__version__)))
    return found

"""Estimated run time of each preset for the chosen image, model and device, for the Speed box.

An estimate is the sum of what the run will really do (:mod:`tilewise.engine.estimate`): load the model, convert
the folds OpenVINO has not cached yet, prepare the image, run the forward passes, write the result. A
:class:`PassTimer` (a superqt generator worker, stopped between its steps) loads the model's first fold at each
precision the presets use (load, first-use conversion and a forward pass, timed) and reads which folds the OpenVINO
cache holds; an :class:`EstimateBook` keeps the measured stage costs in QSettings and refines them from every
finished run. Stages nothing has measured yet use the engine's conservative priors, so those estimates read as a
range.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QSettings, Signal
from superqt.utils import GeneratorWorker
from tilewise.engine import (
    PRIORS,
    Estimate,
    FirstFold,
    Geometry,
    ModelBundle,
    ModelGrid,
    ModelInfo,
    Preset,
    Result,
    Span,
    StageCosts,
    cached_folds,
    estimate_run,
    learn_from_run,
    measure_first_fold,
    nonzero_extent,
)

from ..geometry import geometry_from_layer
from .tasks import Awaitable, start_worker
from .worker import PredictorCache, RunChoice, RunRequest, predictor_key

SETTINGS_GROUP = "estimates"
EXACT_TEXT = ("No time estimate for nnU-Net's own file: it runs nnU-Net's own preprocessing, PyTorch one tile at a "
              "time and nnU-Net's export, which are not timed here. Expect it to take longer than the same preset "
              "without it.")
_STORED = {"load_per_fold": "load/{precision}", "convert_per_fold": "convert/{precision}",
           "preprocess_per_mvoxel": "preprocess", "export_per_mvoxel": "export"}
"""Where each measured stage cost lives under a model and device (the time per pass under its precision's name)."""


@dataclass(frozen=True)
class PassTimes:
    """What a :class:`PassTimer` measured for one model and target: the first fold per precision timed, the
    model's grid, and per precision the folds whose OpenVINO model is cached (None: not OpenVINO)."""

    model_dir: Path
    target: str
    """Device and engine, as :func:`target_key` writes them."""
    first: dict[str, FirstFold]
    grid: ModelGrid
    cached: dict[str, frozenset[str]] | None


class TimingError(Exception):
    """Timing the first fold failed (the message says why); no estimate is shown, the run reports problems."""


def time_passes(model_dir: Path, device: str, backend: str, precisions: tuple[str, ...], probe: tuple[str, ...],
                trust: bool) -> Generator[None, None, PassTimes]:
    """Time the first fold of ``model_dir`` on ``device`` with ``backend`` at each of ``precisions`` (load,
    conversion, a forward pass), then read the OpenVINO cache for every precision in ``probe``.

    A generator for a superqt :class:`~superqt.utils.GeneratorWorker`: it yields before each step, where the
    worker's ``quit()`` skips the steps not done yet (the window is closing). Raises :class:`TimingError`.
    """
    try:
        first: dict[str, FirstFold] = {}
        for precision in precisions:
            yield
            first[precision] = measure_first_fold(model_dir, precision, device, backend, trust)
        yield
        cached = cached_folds(model_dir, probe, device, backend, trust)
        grid = next(iter(first.values())).grid if first else \
            ModelGrid.of(ModelBundle.load(model_dir, fold_count=1, trust=trust))
    except Exception as error:  # no estimate is shown; the run itself reports problems
        # superqt takes a RuntimeError out of a generator for a deleted worker and never says 'finished'
        raise TimingError(str(error)) from error
    return PassTimes(model_dir, target_key(device, backend), first, grid, cached)


class PassTimer(Awaitable, GeneratorWorker):
    """The worker that runs :func:`time_passes` off the GUI thread: ``returned(PassTimes)``, or ``errored`` with a
    :class:`TimingError`; ``quit()`` stops it between two steps."""

    def __init__(self, model_dir: Path, device: str, backend: str, precisions: tuple[str, ...],
                 probe: tuple[str, ...], trust: bool) -> None:
        super().__init__(time_passes, model_dir, device, backend, precisions, probe, trust)


def target_key(device: str, backend: str) -> str:
    """Where the network runs, as the estimates store it: e.g. 'cpu-openvino'."""
    return f"{device}-{backend}"


class EstimateBook:
    """Measured stage costs per model, device and precision, kept in QSettings (:class:`StageCosts`)."""

    def __init__(self, settings: QSettings) -> None:
        self.settings = settings
        self.grids: dict[str, ModelGrid] = {}

    @staticmethod
    def _key(model_dir: Path, device: str, what: str) -> str:
        model = hashlib.sha1(str(Path(model_dir).resolve()).encode()).hexdigest()[:16]
        return f"{SETTINGS_GROUP}/{model}/{device}/{what}"

    def _value(self, model_dir: Path, device: str, what: str) -> float | None:
        value = self.settings.value(self._key(model_dir, device, what))
        try:
            number = float(value) if value is not None else None
        except (TypeError, ValueError):
            return None
        return number if number is not None and math.isfinite(number) and number >= 0 else None

    def seconds_per_pass(self, model_dir: Path, device: str, precision: str) -> float | None:
        """The stored time per forward pass, or None if it was never measured."""
        return self._value(model_dir, device, precision)

    def costs(self, model_dir: Path, device: str, precision: str) -> StageCosts | None:
        """Every stage's cost: measured here, else the engine's prior; None until the time per pass is measured."""
        per_pass = self.seconds_per_pass(model_dir, device, precision)
        if per_pass is None:
            return None
        stages = {}
        for name, what in _STORED.items():
            value = self._value(model_dir, device, what.format(precision=precision))
            stages[name] = Span.of(value) if value is not None else getattr(PRIORS, name)
        return StageCosts(seconds_per_pass=per_pass, **stages)

    def save(self, model_dir: Path, device: str, precision: str, costs: StageCosts) -> None:
        """Store the measured stages of ``costs`` (priors are never stored)."""
        if math.isfinite(costs.seconds_per_pass):
            self.settings.setValue(self._key(model_dir, device, precision), float(costs.seconds_per_pass))
        for stage in fields(costs):
            value = getattr(costs, stage.name)
            if stage.name in _STORED and value.measured:
                what = _STORED[stage.name].format(precision=precision)
                self.settings.setValue(self._key(model_dir, device, what), float(value.mid))

    def store(self, times: PassTimes) -> None:
        """Remember what a timing worker measured, and the model's grid."""
        self.grids[str(times.model_dir)] = times.grid
        for precision, first in times.first.items():
            self.save(times.model_dir, times.target, precision, first.costs())

    def forget(self, model_dir: Path, device: str, precisions: tuple[str, ...]) -> None:
        """Drop what the first fold's timing measured at ``precisions`` (while the CPU was shared with a run), so it
        is timed again."""
        for precision in precisions:
            for what in (precision, _STORED["load_per_fold"], _STORED["convert_per_fold"]):
                self.settings.remove(self._key(model_dir, device, what.format(precision=precision)))

    def learn_from_run(self, model_dir: Path, device: str, precision: str, result: Result, mvoxels: float,
                       fold_count: int, conversions: int, loaded: bool) -> None:
        """Refine the stored costs with what a finished run really took (see :func:`learn_from_run`)."""
        costs = self.costs(model_dir, device, precision) or replace(PRIORS, seconds_per_pass=math.nan)
        self.save(model_dir, device, precision,
                  learn_from_run(costs, result, fold_count, conversions, mvoxels, loaded))


def _folds_of(model: ModelInfo, preset: Preset, chosen: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The folds a run uses: those chosen under Advanced, else the preset's first n (or all) of the model's."""
    if chosen:
        return tuple(chosen)
    return tuple(model.folds[: preset.fold_count] if preset.fold_count else model.folds)


class RunTimeEstimates(QObject):
    """Keeps the estimates for the Speed box up to date and publishes them with ``changed``.

    The widget calls :meth:`refresh` whenever the model, the image or the settings change; the first fold is timed
    and the OpenVINO cache read in the background the first time a model/device is seen in a session (never while
    a run is going on), and :meth:`learn` refines the stage costs from every finished run.
    """

    changed = Signal(object, object, str)
    """The estimates per preset name ({name: Estimate}), the estimate for the chosen settings (or None), and a
    status to show instead of it ('' when there is nothing to say)."""

    def __init__(self, settings: QSettings, presets: dict[str, Preset], cache: PredictorCache,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.presets = presets
        self.cache = cache
        """The runs' predictor cache: an estimate leaves out loading the model exactly when it holds the model."""
        self.book = EstimateBook(settings)
        self.timer: PassTimer | None = None
        self._failed: set[tuple[str, str]] = set()
        self.shown: dict[str, Estimate] = {}
        """The estimates on screen, per preset name."""
        self.chosen: Estimate | None = None
        """The estimate for the chosen settings (None when none is shown)."""
        self.cached: dict[tuple[str, str], dict[str, frozenset[str]] | None] = {}
        """Per (model, target): the folds OpenVINO has cached per precision (None: the target converts nothing)."""
        self._closed = False
        self._timer_started = 0.0
        self._timed: tuple[str, str] = ("", "")
        """(model, target) the timing worker measures."""
        self._timings: list[tuple[float, float, Path, str, tuple[str, ...]]] = []
        """(start, end, model, target, precisions) of this session's first-fold timings, to spot a shared CPU."""
        self._extent_key: tuple[int, ...] = ()
        self._extent: tuple[int, ...] = ()
        self._last: tuple[ModelInfo | None, Geometry | None, tuple[int, ...], bool, bool, RunChoice | None] = \
            (None, None, (), False, False, None)

    def refresh(self, model: ModelInfo | None, layers: list[Any], trusted: bool, busy: bool,
                choice: RunChoice) -> None:
        """Recompute the estimates for ``model`` on the chosen image ``layers`` (none: no image yet) with the
        settings ``choice``; only the image's nonzero part (what nnU-Net crops to) counts."""
        geometry = geometry_from_layer(layers[0]) if layers else None
        extent = self._nonzero_extent(layers) if layers else ()
        self._show(model, geometry, extent, trusted, busy, choice)

    def _nonzero_extent(self, layers: list[Any]) -> tuple[int, ...]:
        """Size of the chosen images' nonzero box (cached per set of arrays: a strided look, milliseconds)."""
        key = tuple(id(layer.data) for layer in layers)
        if key != self._extent_key:
            shapes = {tuple(layer.data.shape) for layer in layers}
            self._extent = nonzero_extent([layer.data for layer in layers]) if len(shapes) == 1 else ()
            self._extent_key = key
        return self._extent

    def _pending(self, model_dir: Path, target: str, precision: str, folds: tuple[str, ...]) -> int:
        """How many of ``folds`` OpenVINO has still to convert at ``precision``."""
        cached = self.cached.get((str(model_dir), target))
        return 0 if cached is None else sum(fold not in cached.get(precision, frozenset()) for fold in folds)

    def _show(self, model: ModelInfo | None, image: Geometry | None, extent_zyx: tuple[int, ...], trusted: bool,
              busy: bool, choice: RunChoice | None) -> None:
        """Recompute the estimates for ``model`` on an image of geometry ``image`` (None: no image yet) whose
        nonzero part measures ``extent_zyx`` voxels."""
        self._last = (model, image, extent_zyx, trusted, busy, choice)
        self.shown, self.chosen = {}, None
        if model is None or image is None or choice is None:
            self.changed.emit({}, None, "")
            return
        target = target_key(choice.device, choice.preset.backend)
        precisions = tuple(sorted({p.precision for p in self.presets.values()} | {choice.preset.precision}))
        grid = self.book.grids.get(str(model.path))
        missing = tuple(p for p in precisions if self.book.seconds_per_pass(model.path, target, p) is None)
        probed = self.cached.get((str(model.path), target), {})
        unprobed = (str(model.path), target) not in self.cached or (
            probed is not None and any(p not in probed for p in precisions))
        if grid is None or missing or unprobed:
            if (str(model.path), target) in self._failed:
                self.changed.emit({}, None, "")
            elif busy:
                self.changed.emit({}, None, "The time estimate follows after this run.")
            else:
                self._start_timer(model.path, choice.device, choice.preset.backend, missing, precisions, trusted)
                self.changed.emit({}, None, "Estimating the time for this image on this computer…")
            return
        shape_zyx = extent_zyx or image.size[::-1]
        spacing_zyx = image.spacing[::-1]
        if len(spacing_zyx) != len(grid.transpose_forward):  # e.g. a 2D image for a 3D model: the run says why
            self.changed.emit({}, None, "")
            return

        def estimate(preset: Preset, folds: tuple[str, ...], requested: tuple[str, ...] | None) -> Estimate:
            """``folds`` run; ``requested`` is what the run's request names (None: the preset's own)."""
            costs = self.book.costs(model.path, target, preset.precision)
            assert costs is not None  # every precision was timed (``missing`` is empty)
            loaded = self.cache.holds(predictor_key(model.path, preset, choice.device, requested, trusted, False))
            conversions = self._pending(model.path, target, preset.precision, folds)
            return estimate_run(grid, preset, len(folds), shape_zyx, spacing_zyx, costs, conversions, loaded)

        backend = choice.preset.backend
        for preset in self.presets.values():
            preset = preset.with_overrides(backend=backend)
            folds = _folds_of(model, preset)  # the speed panel ticks the preset's folds when it is chosen
            self.shown[preset.name] = estimate(preset, folds, folds if model.folds else None)
        if choice.nnunet_exact:
            self.changed.emit(dict(self.shown), None, EXACT_TEXT)
            return
        self.chosen = estimate(choice.preset, _folds_of(model, choice.preset, choice.folds), choice.folds)
        self.changed.emit(dict(self.shown), self.chosen, "")

    def learn(self, request: RunRequest, result: Result) -> None:
        """Use a finished run's real stage timings for the next estimates, unless the CPU was shared with a timing
        thread meanwhile (then that thread's figures are dropped, to be timed again, and the run teaches nothing)."""
        model = self._last[0]
        target = target_key(request.device, request.preset.backend)
        folds = tuple(request.folds) if request.folds else (
            _folds_of(model, request.preset) if model is not None and model.path == request.model_dir else ())
        loaded = self.cache.reused  # the run started with the model loaded: its load timing is an earlier one's
        conversions = 0 if request.nnunet_exact else self._pending(request.model_dir, target,
                                                                   request.preset.precision, folds)
        cached = self.cached.get((str(request.model_dir), target))
        if cached is not None and not request.nnunet_exact:  # the run converted and cached what it had not
            precision = request.preset.precision
            self.cached[(str(request.model_dir), target)] = {**cached,
                                                             precision: cached.get(precision, frozenset()) | set(folds)}
        # the run's span, or less ("convert" is part of "load")
        took = sum(v for k, v in result.timings.items() if k != "convert" and (k != "load" or not loaded))
        shared = [t for t in self._timings if t[1] > time.monotonic() - took]
        if self.timer is not None or shared:
            for _start, _end, model_dir, timed_target, precisions in shared:
                self.book.forget(model_dir, timed_target, precisions)
            self._timings = [t for t in self._timings if t not in shared]
        elif folds and not request.nnunet_exact:
            mvoxels = float(np.prod(self._extent or result.labels.shape)) / 1e6  # the estimate's unit: the box
            self.book.learn_from_run(request.model_dir, target, request.preset.precision, result, mvoxels,
                                     len(folds), conversions, loaded)
        self._show(*self._last)

    def shutdown(self) -> None:
        """Stop and wait for a timing worker (it finishes the step it is in); no new one starts afterwards."""
        self._closed = True
        if self.timer is not None:
            self.timer.quit()
            self.timer.wait(60_000)

    def _start_timer(self, model_dir: Path, device: str, backend: str, precisions: tuple[str, ...],
                     probe: tuple[str, ...], trusted: bool) -> None:
        if self.timer is not None or self._closed:
            return
        timer = PassTimer(model_dir, device, backend, precisions, probe, trusted)
        target = target_key(device, backend)
        # bound methods of this QObject: Qt queues the worker's signals to the GUI thread
        timer.returned.connect(self._on_measured)
        timer.errored.connect(self._on_failed)
        timer.finished.connect(self._on_timer_finished)
        self.timer, self._timer_started = timer, time.monotonic()
        self._timed = (str(model_dir), target)
        start_worker(timer)

    def _on_measured(self, times: PassTimes) -> None:
        self.book.store(times)
        self.cached[(str(times.model_dir), times.target)] = times.cached
        if times.first:
            self._timings.append((self._timer_started, time.monotonic(), times.model_dir, times.target,
                                  tuple(times.first)))

    def _on_failed(self, _error: BaseException) -> None:
        self._failed.add(self._timed)

    def _on_timer_finished(self) -> None:
        self.timer = None  # superqt drops the worker once it has ended
        if not self._closed:
            self._show(*self._last)

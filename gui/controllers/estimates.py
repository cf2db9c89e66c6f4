"""Estimated run time of each preset for the chosen image, model and device, for the Speed box.

An estimate is the sum of what the run will really do (:mod:`tilewise.engine.estimate`): load the model, convert
the folds OpenVINO has not cached yet, prepare the image, run the forward passes, write the result. A
:class:`PassTimer` (a superqt generator worker, stopped between its steps) loads the model's first fold at each
precision the presets use (load, first-use conversion and a forward pass, timed) and reads which folds the OpenVINO
cache holds; an :class:`EstimateBook` keeps the measured stage costs in QSettings and refines them from every
finished run. Stages nothing has measured yet use the engine's conservative priors, so those estimates read as a
range; before the first fold is timed, the tiles are counted from the model's ``plans.json`` and a pass spans a
wide prior (:mod:`.estimate_priors`), so an estimate shows as soon as the model and the image are known and is
refined in place. A TotalSegmentator task (several models on its own resampled grids) is not estimated yet: the
Speed box says so, with how long its last run took in this session. What is shown keeps the presets in order (preview, fast, balanced, reference: never shorter than
the one before) and is widened while the computer is busier than its cores.
"""
from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, replace
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
    cached_folds,
    estimate_run,
    measure_first_fold,
    nonzero_extent,
)

from ..geometry import geometry_from_layer
from ..task_models import TaskModelInfo
from .estimate_book import EstimateBook, PassTimes
from .estimate_priors import (
    ShownEstimates,
    TaskNote,
    between,
    in_preset_order,
    is_busy,
    machine_load,
    plans_grid,
    prior_pass_seconds,
    runs_on,
    widened,
)
from .tasks import Awaitable, start_worker
from .worker import PredictorCache, RunChoice, RunRequest, predictor_key

EXACT_TEXT = ("No time estimate for nnU-Net's own file: it runs nnU-Net's own preprocessing, PyTorch one tile at a "
              "time and nnU-Net's export, which are not timed here. Expect it to take longer than the same preset "
              "without it.")


@dataclass(frozen=True)
class LoadPlan:
    """What loading the model for a run will do, as the estimates know it before Run: for the loading stage's
    conversion line and its time left."""

    openvino: bool
    """The run gets each fold ready for OpenVINO after reading it (a second pass over the folds)."""
    convert_per_fold_s: float
    """Seconds one fold's first-use conversion takes: measured on this computer, else the engine's prior."""
    pending: int | None
    """Folds OpenVINO has not cached yet at the run's precision; None when the cache was not read yet."""


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

    changed = Signal(object)
    """What the Speed box shows (:class:`ShownEstimates`)."""

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
        self.view = ShownEstimates({})
        """What the Speed box shows now."""
        self.machine_load = machine_load
        """Returns (load average, cores): the estimates shown are widened while the computer is busier than that."""
        self.cached: dict[tuple[str, str], dict[str, frozenset[str]] | None] = {}
        """Per (model, target): the folds OpenVINO has cached per precision (None: the target converts nothing)."""
        self._closed = False
        self._timer_started = 0.0
        self._timed: tuple[str, str] = ("", "")
        """(model, target) the timing worker measures."""
        self._timings: list[tuple[float, float, Path, str, tuple[str, ...]]] = []
        """(start, end, model, target, precisions) of this session's first-fold timings, to spot a shared CPU."""
        self.task_runs: dict[str, float] = {}
        """Seconds the last run of each TotalSegmentator task took in this session, by its ``-m`` name."""
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
        nonzero part measures ``extent_zyx`` voxels. Until the first fold has been timed here (started now, unless a
        run is going on), the stages not measured yet span the priors' range."""
        self._last = (model, image, extent_zyx, trusted, busy, choice)
        self.shown, self.chosen = {}, None
        if isinstance(model, TaskModelInfo) and model.spec is not None:
            self._emit(ShownEstimates({}, task=TaskNote(model.name, model.spec.main.step,
                                                        self.task_runs.get(model.name))))
            return
        if model is None or image is None or choice is None:
            self._emit(ShownEstimates({}))
            return
        target = target_key(choice.device, choice.preset.backend)
        backend = choice.preset.backend
        precisions = tuple(sorted({p.precision for p in self.presets.values()} | {choice.preset.precision}))
        grid = self.book.grids.get(str(model.path))
        missing = tuple(p for p in precisions if self.book.seconds_per_pass(model.path, target, p) is None)
        probed = self.cached.get((str(model.path), target), {})
        unprobed = (str(model.path), target) not in self.cached or (
            probed is not None and any(p not in probed for p in precisions))
        if grid is None or missing or unprobed:
            if (str(model.path), target) in self._failed:  # the run itself says what is wrong with the model
                self._emit(ShownEstimates({}))
                return
            if not busy:
                self._start_timer(model.path, choice.device, backend, missing, precisions, trusted)
            grid = grid or plans_grid(model.path, model.configuration)
            if grid is None:
                self._emit(ShownEstimates({}, status="The time estimate follows after this run." if busy else
                                          "Estimating the time for this image on this computer…"))
                return
        shape_zyx = extent_zyx or image.size[::-1]
        spacing_zyx = image.spacing[::-1]
        if len(spacing_zyx) != len(grid.transpose_forward):  # e.g. a 2D image for a 3D model: the run says why
            self._emit(ShownEstimates({}))
            return
        converts = runs_on(choice.device, backend) == "openvino"

        def estimate(preset: Preset, folds: tuple[str, ...], requested: tuple[str, ...] | None) -> Estimate:
            """``folds`` run; ``requested`` is what the run's request names (None: the preset's own)."""
            costs = self.book.costs(model.path, target, preset.precision)
            loaded = self.cache.holds(predictor_key(model.path, preset, choice.device, requested, trusted, False))
            pending = self._pending(model.path, target, preset.precision, folds)
            if costs is not None and not unprobed:
                return estimate_run(grid, preset, len(folds), shape_zyx, spacing_zyx, costs, pending, loaded)
            # not timed or probed yet: from the fast end of every prior to its slow end
            per_pass = prior_pass_seconds(grid, choice.device, backend) if costs is None else \
                Span.of(costs.seconds_per_pass)
            base = costs or PRIORS
            at_most = len(folds) if unprobed and converts else pending
            fast, slow = (estimate_run(grid, preset, len(folds), shape_zyx, spacing_zyx,
                                       replace(base, seconds_per_pass=seconds), conversions, loaded)
                          for seconds, conversions in ((per_pass.low, 0 if unprobed else pending),
                                                       (per_pass.high, at_most)))
            return between(fast, slow)

        for preset in self.presets.values():
            preset = preset.with_overrides(backend=backend)
            folds = _folds_of(model, preset)  # the speed panel ticks the preset's folds when it is chosen
            self.shown[preset.name] = estimate(preset, folds, folds if model.folds else None)
        if not choice.nnunet_exact:
            self.chosen = estimate(choice.preset, _folds_of(model, choice.preset, choice.folds), choice.folds)
        self._emit_estimates(choice)

    def _emit_estimates(self, choice: RunChoice) -> None:
        """Publish :attr:`shown` and :attr:`chosen`: in preset order, widened when the computer is busy now."""
        load = self.machine_load()
        ordered = in_preset_order({name: estimate.total for name, estimate in self.shown.items()})
        chosen_total = None
        if self.chosen is not None:  # the chosen preset as it is: the figure its list entry shows
            same = self.chosen == self.shown.get(choice.preset.name)
            chosen_total = widened(ordered[choice.preset.name] if same else self.chosen.total, load)
        self._emit(ShownEstimates({name: widened(span, load) for name, span in ordered.items()}, self.chosen,
                                  chosen_total, "" if self.chosen is not None else EXACT_TEXT,
                                  load if is_busy(load) else None))

    def _emit(self, shown: ShownEstimates) -> None:
        self.view = shown
        self.changed.emit(shown)

    def load_plan(self, request: RunRequest) -> LoadPlan:
        """What loading ``request``'s model will do: OpenVINO or not, a fold's conversion time (the figure the
        estimate uses) and how many folds still convert."""
        target = target_key(request.device, request.preset.backend)
        openvino = not request.nnunet_exact and runs_on(request.device, request.preset.backend) == "openvino"
        costs = self.book.costs(request.model_dir, target, request.preset.precision) or PRIORS
        model = self._last[0]
        folds = tuple(request.folds) if request.folds else (
            _folds_of(model, request.preset) if model is not None and model.path == request.model_dir else ())
        known = folds and (str(request.model_dir), target) in self.cached
        pending = self._pending(request.model_dir, target, request.preset.precision, folds) if known else None
        return LoadPlan(openvino, costs.convert_per_fold.mid, pending if openvino else 0)

    def learn(self, request: RunRequest, result: Result) -> None:
        """Use a finished run's real stage timings for the next estimates, unless the CPU was shared with a timing
        thread meanwhile (then that thread's figures are dropped, to be timed again, and the run teaches nothing).
        A task's run is remembered as a whole (how long it took)."""
        if request.task is not None:
            self.task_runs[request.task.model_name] = sum(result.timings.values())
            self._show(*self._last)
            return
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

"""Estimated run time of each preset for the chosen image, model and device, for the Speed box.

A :class:`PassTimer` thread loads one fold of the model and times real forward passes at each precision the presets
use; an :class:`EstimateBook` keeps those times (and the preparation time per voxel) in QSettings, so the next
start shows estimates at once, and refines them from every finished run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QCoreApplication, QObject, QSettings, QThread, Signal

from tilewise.engine import Geometry, Predictor, Preset, Result, get_preset
from tilewise.engine.model.catalog import ModelInfo
from tilewise.engine.estimate import (
    OVERHEAD_S_PER_MVOXEL, Estimate, ModelGrid, estimate_run, nonzero_extent, time_forward_pass,
)

from ..geometry import geometry_from_layer
from .worker import RunChoice, RunRequest

SETTINGS_GROUP = "estimates"
_ACTIVE: set["PassTimer"] = set()
_WAIT_ON_QUIT: list[bool] = []
"""Timing threads still running. They outlive a closed panel (Qt must never destroy a running thread); the
application waits for them before it quits."""


def _wait_for_timers() -> None:
    for timer in list(_ACTIVE):
        timer.stop()
        timer.wait(60_000)


def describe_seconds(seconds: float) -> str:
    """'about 40 s', 'about 3 min', 'about 1 h 10 min': rounded the way a person would say it."""
    if seconds < 1.5:
        return "about 1 s"
    if seconds < 60:
        return f"about {round(seconds / 5) * 5 if seconds > 20 else round(seconds)} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"about {round(minutes)} min"
    return f"about {int(minutes // 60)} h {round(minutes % 60)} min"


@dataclass(frozen=True)
class PassTimes:
    """Measured seconds per forward pass at each precision, and the model's grid."""

    model_dir: Path
    target: str
    """Device and engine, as :func:`target_key` writes them."""
    seconds: dict[str, float]
    grid: ModelGrid


class PassTimer(QThread):
    """Times forward passes of one fold of ``model_dir`` on ``device`` with ``backend`` at each of ``precisions``, off
    the GUI thread.

    Emits ``measured(PassTimes)`` or ``failed(message)``.
    """

    measured = Signal(object)
    failed = Signal(str)

    def __init__(self, model_dir: Path, device: str, backend: str, precisions: tuple[str, ...], trust: bool) -> None:
        super().__init__()
        self.model_dir, self.device, self.backend, self.precisions, self.trust = \
            model_dir, device, backend, precisions, trust
        self._stopped = False
        self.finished.connect(lambda: _ACTIVE.discard(self))

    def start(self) -> None:  # noqa: D102 - kept alive until finished, waited for when the application quits
        app = QCoreApplication.instance()
        if app is not None and not _WAIT_ON_QUIT:
            app.aboutToQuit.connect(_wait_for_timers)
            _WAIT_ON_QUIT.append(True)
        _ACTIVE.add(self)
        super().start()

    def stop(self) -> None:
        """Skip the precisions not timed yet (the window is closing)."""
        self._stopped = True

    def run(self) -> None:  # noqa: D102 - QThread entry point
        try:
            seconds: dict[str, float] = {}
            grid: ModelGrid | None = None
            for precision in self.precisions or ("fp32",):
                if self._stopped:
                    return
                preset = get_preset("fast").with_overrides(precision=precision, mirroring=False, batch_size=1,
                                                           backend=self.backend)
                predictor = Predictor(self.model_dir, preset, device=self.device, trust=self.trust)
                grid = ModelGrid.of(predictor.bundle)
                if precision in self.precisions:
                    seconds[precision] = time_forward_pass(predictor)
                del predictor
        except Exception as error:  # noqa: BLE001 - no estimate is shown; the run itself reports problems
            self.failed.emit(str(error))
        else:
            assert grid is not None
            self.measured.emit(PassTimes(self.model_dir, target_key(self.device, self.backend), seconds, grid))


def target_key(device: str, backend: str) -> str:
    """Where the network runs, as the estimates store it: e.g. 'cpu-openvino'."""
    return f"{device}-{backend}"


class EstimateBook:
    """Seconds per forward pass and preparation seconds per million voxels, per model, device and precision."""

    def __init__(self, settings: QSettings) -> None:
        self.settings = settings
        self.grids: dict[str, ModelGrid] = {}

    @staticmethod
    def _key(model_dir: Path, device: str, what: str) -> str:
        model = hashlib.sha1(str(Path(model_dir).resolve()).encode()).hexdigest()[:16]
        return f"{SETTINGS_GROUP}/{model}/{device}/{what}"

    def seconds_per_pass(self, model_dir: Path, device: str, precision: str) -> float | None:
        """The stored time per forward pass, or None if it was never measured."""
        value = self.settings.value(self._key(model_dir, device, precision))
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def overhead_per_mvoxel(self, model_dir: Path, device: str) -> float:
        """Preprocessing + export seconds per million input voxels (a default until a run measured it)."""
        value = self.settings.value(self._key(model_dir, device, "overhead"))
        try:
            return float(value) if value is not None else OVERHEAD_S_PER_MVOXEL
        except (TypeError, ValueError):
            return OVERHEAD_S_PER_MVOXEL

    def store(self, times: PassTimes) -> None:
        """Remember measured pass times and the model's grid."""
        self.grids[str(times.model_dir)] = times.grid
        for precision, seconds in times.seconds.items():
            self.settings.setValue(self._key(times.model_dir, times.target, precision), float(seconds))

    def learn_from_run(self, model_dir: Path, device: str, precision: str, result: Result, voxels: int) -> None:
        """Refine the stored times with what a finished run really took (``voxels``: of the image's nonzero box)."""
        if result.forward_passes > 0:
            per_pass = result.timings.get("sliding_window", 0.0) / result.forward_passes
            self.settings.setValue(self._key(model_dir, device, precision), float(per_pass))
        if voxels > 0:
            overhead = result.timings.get("preprocess", 0.0) + result.timings.get("export", 0.0)
            self.settings.setValue(self._key(model_dir, device, "overhead"), float(overhead / voxels * 1e6))


class RunTimeEstimates(QObject):
    """Keeps the estimates for the Speed box up to date and publishes them with ``changed``.

    The widget calls :meth:`refresh` whenever the model, the image or the settings change; forward passes are timed
    in the background the first time a model/device/precision is seen (never while a run is going on).
    """

    changed = Signal(object, str)
    """Estimated time per preset name ({name: 'about 40 s'}), and the text for the chosen settings (or a status)."""

    def __init__(self, settings: QSettings, presets: dict[str, Preset], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.presets = presets
        self.book = EstimateBook(settings)
        self.timer: PassTimer | None = None
        self._failed: set[tuple[str, str]] = set()
        self.shown: dict[str, Estimate] = {}
        """The estimates on screen, per preset name."""
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

    def _show(self, model: ModelInfo | None, image: Geometry | None, extent_zyx: tuple[int, ...], trusted: bool,
              busy: bool, choice: RunChoice | None) -> None:
        """Recompute the estimates for ``model`` on an image of geometry ``image`` (None: no image yet) whose
        nonzero part measures ``extent_zyx`` voxels."""
        self._last = (model, image, extent_zyx, trusted, busy, choice)
        self.shown = {}
        if model is None or image is None or choice is None:
            self.changed.emit({}, "")
            return
        device = target_key(choice.device, choice.preset.backend)
        presets = list(self.presets.values())
        precisions = {p.precision for p in presets} | {choice.preset.precision}
        grid = self.book.grids.get(str(model.path))
        missing = tuple(sorted(p for p in precisions
                               if self.book.seconds_per_pass(model.path, device, p) is None))
        if grid is None or missing:
            if (str(model.path), device) in self._failed:
                self.changed.emit({}, "")
            elif busy:
                self.changed.emit({}, "The time estimate follows after this run.")
            else:
                self._start_timer(model.path, choice.device, choice.preset.backend, missing, trusted)
                self.changed.emit({}, "Estimating the time for this image on this computer…")
            return
        shape_zyx = extent_zyx or image.size[::-1]
        spacing_zyx = image.spacing[::-1]
        overhead = self.book.overhead_per_mvoxel(model.path, device)
        folds = max(len(model.folds), 1)

        def estimate(preset: Preset, fold_count: int) -> Estimate:
            seconds = self.book.seconds_per_pass(model.path, device, preset.precision) or 0.0
            return estimate_run(grid, preset, fold_count, shape_zyx, spacing_zyx, seconds, overhead)

        self.shown = {p.name: estimate(p, min(p.fold_count or folds, folds)) for p in presets}
        per_preset = {name: describe_seconds(shown.seconds) for name, shown in self.shown.items()}
        chosen = estimate(choice.preset, len(choice.folds) if choice.folds else folds)
        passes = "pass" if chosen.passes_per_tile == 1 else "passes"
        text = (f"Estimated for this image: <b>{describe_seconds(chosen.seconds)}</b> "
                f"({chosen.tiles} tiles x {chosen.passes_per_tile} {passes}")
        text += ", fewer when tiles outside the body are skipped)" if choice.preset.skip_empty_tiles else ")"
        self.changed.emit(per_preset, text)

    def learn(self, request: RunRequest, result: Result) -> None:
        """Use a finished run's real timings for the next estimates."""
        voxels = int(np.prod(self._extent or result.labels.shape))  # the estimate's unit: the nonzero box
        self.book.learn_from_run(request.model_dir, target_key(request.device, request.preset.backend),
                                 request.preset.precision, result, voxels)
        self._show(*self._last)

    def shutdown(self) -> None:
        """Stop and wait for a timing thread (it finishes the forward pass it is in)."""
        if self.timer is not None:
            self.timer.stop()
            self.timer.wait(60_000)

    def _start_timer(self, model_dir: Path, device: str, backend: str, precisions: tuple[str, ...],
                     trusted: bool) -> None:
        if self.timer is not None:
            return
        timer = PassTimer(model_dir, device, backend, precisions, trusted)
        target = target_key(device, backend)
        timer.measured.connect(self._on_measured)
        timer.failed.connect(lambda _message: self._on_failed(str(model_dir), target))
        timer.finished.connect(self._on_timer_finished)
        self.timer = timer
        timer.start()

    def _on_measured(self, times: PassTimes) -> None:
        self.book.store(times)

    def _on_failed(self, model_dir: str, device: str) -> None:
        self._failed.add((model_dir, device))

    def _on_timer_finished(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.deleteLater()
        self._show(*self._last)

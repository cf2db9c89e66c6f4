"""Measured stage costs per model, device and precision, kept in the viewer's settings (QSettings) across sessions.

Only figures measured on this computer are stored (the first fold's timing, then every finished run); a stage never
measured reads as the engine's prior range.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from qtpy.QtCore import QSettings
from tilewise.engine import PRIORS, FirstFold, ModelGrid, Result, Span, StageCosts, learn_from_run

SETTINGS_GROUP = "estimates"
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

"""The loading stage of a run in the Segment step: which fold of the model loads, and, while a fold is converted for
OpenVINO on its first use, a line that says why, how long it takes and how much of it is left.

The time left starts from the estimate's figure for one fold's conversion (measured on this computer, else the
engine's prior) and is re-estimated from the folds converted so far (their mean), as they finish.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from ..controllers.estimates import LoadPlan

TICK_MS = 500
"""How often the conversion's time left is shown again while a fold converts."""
LOADING_FOLD_TEXT = "Loading the model: fold {fold} of {folds}…"
READYING_FOLD_TEXT = "Loading the model: fold {fold} of {folds}, getting it ready for {target}…"
FOLD_FORMAT = "Fold {fold} of {folds}"
FIRST_USE_TEXT = ("First use of this model at this precision: converting it for {target}, about {about}, once. "
                  "Later runs skip this step.")
REBUILD_TEXT = "The saved copy of this model for {target} could not be used: converting it again, about {about}."
CONVERT_FORMAT = "Converting fold {fold} of {folds}: about {left} left"
ALMOST_FORMAT = "Converting fold {fold} of {folds}: almost done"


def target_name(device: str) -> str:
    """'this CPU', 'this graphics chip': where OpenVINO runs, in plain words."""
    return "this graphics chip" if device.upper().startswith("GPU") else "this CPU"


def about(seconds: float) -> str:
    """'40 s', '3 min': a rough duration for a sentence."""
    if seconds < 90:
        return f"{max(5, round(seconds / 5) * 5)} s"
    return f"{round(seconds / 60)} min"


def format_duration(seconds: float) -> str:
    """'0:07', '2:05', '1:02:05'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ConversionClock:
    """The time left of a load's conversions: the one under way and those still to come.

    A fold's conversion is expected to take the plan's figure until a fold has converted in this load; then the mean
    of the converted folds' seconds. ``clock`` is in seconds (tests pass their own).
    """

    def __init__(self, plan: LoadPlan | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self._clock = clock
        self._measured: list[float] = []
        self._fold = 0
        self._folds = 0
        self._started: float | None = None

    @property
    def per_fold_s(self) -> float:
        """Seconds one fold's conversion is expected to take now."""
        if self._measured:
            return sum(self._measured) / len(self._measured)
        return self.plan.convert_per_fold_s if self.plan is not None else 10.0

    def start(self, fold: int, folds: int) -> None:
        """Fold ``fold`` of ``folds`` starts converting now."""
        self._fold, self._folds, self._started = fold, folds, self._clock()

    def finish(self, seconds: float) -> None:
        """The fold under way has converted in ``seconds``."""
        self._measured.append(seconds)
        self._started = None

    def later_folds(self) -> int:
        """Folds after the one under way still to convert (the plan's count when the cache was read, else all)."""
        after = self._folds - self._fold
        seen = len(self._measured) + 1  # the conversions of this load so far, the one under way included
        if self.plan is None or self.plan.pending is None or self.plan.pending < seen:  # unknown, or out of date
            return after
        return min(after, self.plan.pending - seen)

    def fold_left_s(self) -> float:
        """Seconds left of the fold under way (0: it takes longer than expected)."""
        if self._started is None:
            return 0.0
        return max(0.0, self.per_fold_s - (self._clock() - self._started))

    def total_s(self) -> float:
        """Seconds left of this fold's conversion and of the conversions still to come."""
        return self.fold_left_s() + self.later_folds() * self.per_fold_s


class ConversionLine(QWidget):
    """While a fold converts for OpenVINO: why (first use, or a rebuilt copy), about how long, and its own bar with
    the time left; hidden otherwise."""

    def __init__(self, parent: QWidget | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self._clock_source = clock
        self.clock = ConversionClock(None, clock)
        self.reason = QLabel("")
        self.reason.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.bar.setRange(0, 1000)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.reason)
        layout.addWidget(self.bar)
        self._timer = QTimer(self)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._show_left)
        self._event: Any = None
        self.setVisible(False)

    def reset(self, plan: LoadPlan | None) -> None:
        """A new load, with what the estimates expect of it."""
        self.stop()
        self.clock = ConversionClock(plan, self._clock_source)

    def follow(self, event: Any) -> None:
        """Follow a :class:`~tilewise.engine.LoadEvent`: a conversion starts (shown) or ends (hidden)."""
        if event.step == "converting":
            self._event = event
            self.clock.start(event.fold, event.folds)
            target = target_name(event.device)
            total = self.clock.total_s()
            self.reason.setText(REBUILD_TEXT.format(target=target, about=about(total)) if event.reason else
                                FIRST_USE_TEXT.format(target=target, about=about(total)))
            self.reason.setToolTip(f"Why: {event.reason}" if event.reason else
                                   "OpenVINO runs the model faster on this computer; it converts each fold once per "
                                   "precision and keeps it for later runs.")
            self.setVisible(True)
            self._show_left()
            self._timer.start()
        elif event.step == "converted":
            self.clock.finish(event.fold_seconds)
            self.stop()
        elif event.step in ("cached", "loading"):
            self.stop()

    def stop(self) -> None:
        """Hide the line (no fold converts now)."""
        self._timer.stop()
        self._event = None
        self.setVisible(False)

    def _show_left(self) -> None:
        event = self._event
        if event is None:
            return
        left = self.clock.fold_left_s()
        per_fold = max(self.clock.per_fold_s, 1e-3)
        self.bar.setValue(round(1000 * min(0.99, 1 - left / per_fold)))
        self.bar.setFormat(CONVERT_FORMAT.format(fold=event.fold, folds=event.folds, left=format_duration(left))
                           if left >= 1 else ALMOST_FORMAT.format(fold=event.fold, folds=event.folds))

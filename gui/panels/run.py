"""Run/Cancel and the run's progress: a tile bar, what happens in words and the time, also in napari's activity panel.

A tile's progress is shown from a timer, at most ~10 times a second: a text change lays out the dock again, and
napari's bar processes events when updated. The dock's bar, its "N of M tiles" text and napari's bar always show the
same count: the dock shows the count napari's bar shows (which takes a new count at most every
:data:`~.activity.COUNT_INTERVAL_S`). The time left only counts down (:class:`RemainingTime`).

While the model loads, the bar counts its folds ("Fold k of n": each fold read, then, for OpenVINO, each made ready
for this computer) and a conversion line (:mod:`.loading`) says why a fold converts and how long it has left.

Run shows Cancel and "Loading the model…" at once: the button and the status line are painted before the click
handler goes on to build the preview layer (which takes napari a few hundred milliseconds).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..controllers.estimates import LoadPlan
from ..controllers.run import RUN_STATES, State
from .activity import ActivityProgress
from .loading import FOLD_FORMAT, LOADING_FOLD_TEXT, READYING_FOLD_TEXT, ConversionLine, format_duration, target_name

PROGRESS_INTERVAL_MS = 100
COUNT_FORMAT = "%v of %m tiles"
READY_TEXT = "Ready."
LOADING_TEXT = "Loading the model…"
FINISHING_TEXT = "Finishing: writing labels on the input grid…"
SLICE_FIRST_NOTE = "The slice on screen runs first."
TASK_NOTE = "TotalSegmentator's labels appear when all its models have run."
"""What the status line adds to the tile count: a model's tiles fill in (the slice on screen first); a
TotalSegmentator task's models run on its own resampled grid, so its labels show at the end."""
STOPPED_TEXTS = {"cancelled": "Cancelled. No labels were kept.",
                 "failed": "The segmentation did not run (see the message)."}


class RemainingTime:
    """The time left for a stage's tiles, from the pace of the tiles done so far, never more than shown before.

    The pace is measured from the first tile reported (the first batch also warms the backend up, so it is not
    counted); until a second tile arrives the engine's own estimate stands. The value shown is the smallest estimate
    so far, so it only counts down; a new stage (another total, or fewer tiles done than before) starts afresh.
    """

    def __init__(self) -> None:
        self._start_stage(None)

    def _start_stage(self, total: int | None) -> None:
        self._total = total
        self._done = 0
        self._first: tuple[float, int] | None = None
        self._shown: float | None = None

    def update(self, done: int, total: int, now: float, engine_eta_s: float) -> float:
        """The seconds left once ``done`` of ``total`` tiles have run at time ``now`` (seconds, any clock)."""
        if total != self._total or done < self._done:
            self._start_stage(total)
        self._done = done
        if self._first is None:
            self._first = (now, done)
            estimate = max(0.0, engine_eta_s)
        elif done > self._first[1]:
            estimate = (now - self._first[0]) / (done - self._first[1]) * (total - done)
        else:
            estimate = self._shown if self._shown is not None else max(0.0, engine_eta_s)
        self._shown = estimate if self._shown is None else min(self._shown, estimate)
        return self._shown


class RunPanel(QWidget):
    """The Run/Cancel button, the tile progress bar, a status line and the timing; and the bar of the task going on
    (a run, or an image being opened) in napari's activity panel.

    ``clock`` (seconds) times the run's elapsed and remaining time; tests pass their own.
    """

    collapse_previous = Signal()  # a run starts: the dock collapses the steps before this one to their summaries
    reveal_next = Signal()  # a run left a result: the dock opens the steps after this one (Review and Save)
    bring_into_view = Signal(object)  # a warning appeared above Run: the dock scrolls to show it and Run

    def __init__(self, viewer: Any, parent: QWidget | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.activity: ActivityProgress | None = None
        self._state = State.IDLE
        self._latest_tile: Any = None
        self._all_tiles_done = False
        self._stage_text = ""
        self._tile_note = SLICE_FIRST_NOTE
        self._clock = clock
        self._run_started = 0.0
        self._remaining = RemainingTime()

        import qtawesome

        self._icons = {
            "run": qtawesome.icon("fa5s.play", color="#3cb44b"),
            "cancel": qtawesome.icon("fa5s.stop", color="#e6194b"),
        }
        self.run_button = QPushButton()
        self.run_button.setMinimumHeight(36)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self._show_no_count()
        self.status = QLabel(READY_TEXT)
        self.status.setWordWrap(True)
        self.timing = QLabel("")
        self.timing.setVisible(False)
        self.conversion = ConversionLine(self, clock)
        """While a fold converts for OpenVINO: why, about how long, and its own bar with the time left."""
        self._load_plan: LoadPlan | None = None
        self.fit_warning = QLabel("")
        """What the model says of the chosen image before Run (see :meth:`show_fit`); hidden when nothing."""
        self.fit_warning.setWordWrap(True)
        self.fit_warning.setStyleSheet("color: #f0a030;")  # amber: worth reading, not an error
        self.fit_warning.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.fit_warning)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.conversion)
        layout.addWidget(self.timing)

        self._progress_timer = QTimer(self)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.setInterval(PROGRESS_INTERVAL_MS)
        self._progress_timer.timeout.connect(self._update_progress)

    # ---- public ---------------------------------------------------------------------------------
    def show_state(self, state: State) -> None:
        """Show what the dock does now: Run or Cancel (unavailable while a file is read or written, or while a run
        is cancelling), and the run's stage."""
        self._state = state
        self.run_button.setEnabled(state not in (State.OPENING, State.SAVING, State.CANCELLING))
        if state in RUN_STATES:
            self.run_button.setIcon(self._icons["cancel"])
            self.run_button.setText("Cancel (Esc)")
            self.run_button.setToolTip("Stop the segmentation; its partial labels are removed")
        else:
            self.run_button.setIcon(self._icons["run"])
            self.run_button.setText("Run segmentation")
            self.run_button.setToolTip("Segment the chosen image with the chosen model; the labels fill in "
                                       "tile by tile, the slice on screen first")
        if state is State.LOADING:
            self._latest_tile = None
            self._all_tiles_done = False
            self._stage_text = LOADING_TEXT
            self._run_started = self._clock()
            self._remaining = RemainingTime()
            self.progress.setFormat("")
            self.progress.setRange(0, 0)  # busy until the first fold or the first tile reports a count
            self.status.setText(LOADING_TEXT)
            self._set_timing("")
            self._load_plan = None
            self.conversion.reset(None)
            self.collapse_previous.emit()
            self._paint_now()
        elif state is not State.LOADING:
            self.conversion.stop()
        if state is State.CANCELLING:
            self.status.setText(self.cancelling_text())
            self._schedule_progress()
        elif state is State.FINISHING:
            self.status.setText(FINISHING_TEXT)
        elif state is State.IDLE:
            self._latest_tile = None
            self._progress_timer.stop()
            self.close_activity()

    def show_stage(self, text: str) -> None:
        """What the run does before its first tile (a cancelling run keeps saying that it is cancelling); the bar is
        busy until the next fold or the first tile has a count."""
        self._stage_text = text
        if self._state is State.LOADING and self._latest_tile is None:
            self.progress.setFormat("")
            self.progress.setRange(0, 0)
            self.conversion.stop()
        if self._state is not State.CANCELLING:
            self.status.setText(text)

    def expect_loading(self, plan: LoadPlan) -> None:
        """What the estimates expect of the load that has just started: OpenVINO or not, a fold's conversion time
        and how many folds convert (the conversion line's first time left)."""
        self._load_plan = plan
        self.conversion.reset(plan)

    def show_loading(self, event: Any) -> None:
        """A :class:`~tilewise.engine.LoadEvent`: the bar counts the folds (read, then made ready for OpenVINO) and
        the conversion line follows a fold's conversion. Ignored once the first tile has come or while cancelling."""
        if self._state is not State.LOADING or self._latest_tile is not None:
            return
        readying = event.step != "loading"
        passes = 2 if readying or (self._load_plan is not None and self._load_plan.openvino) else 1
        done = event.fold - 1 + (event.folds if readying else 0) + (event.step in ("cached", "converted"))
        self.progress.setRange(0, passes * event.folds)
        self.progress.setValue(done)
        self.progress.setFormat(FOLD_FORMAT.format(fold=event.fold, folds=event.folds))
        text = (READYING_FOLD_TEXT.format(fold=event.fold, folds=event.folds, target=target_name(event.device))
                if readying else LOADING_FOLD_TEXT.format(fold=event.fold, folds=event.folds))
        self.status.setText(text)
        self.conversion.follow(event)

    def cancelling_text(self) -> str:
        """What a cancelling run waits for: the step before the first tile, the tile that runs, or the export."""
        if self._all_tiles_done:
            return "Cancelling: stopping after the current slab of the result…"
        if self._latest_tile is None:
            step = (self._stage_text or "Loading the model…").rstrip("…").lower()
            return f"Cancelling: {step} stops at its next step…"
        return "Cancelling: waiting for the current tile to finish…"

    def show_tile(self, event: Any) -> None:
        """Note the latest tile; the texts and bars follow at most ~10 times a second. A task's count that grows
        after its crop stage has finished is counted again."""
        self._latest_tile = event
        self.conversion.stop()
        if event.done < event.total and self._all_tiles_done:
            self._all_tiles_done = False
        if event.done >= event.total and not self._all_tiles_done:
            self._all_tiles_done = True  # the labels go back on the input grid now: a busy bar, no steps to count
            self.progress.setFormat("")
            self.progress.setRange(0, 0)
            elapsed = format_duration(self._clock() - self._run_started)
            self._set_timing(f"All {event.total} tiles done · elapsed {elapsed}")
        self._schedule_progress()

    def show_done(self, elapsed_s: float, tiles: int) -> None:
        """A full bar and the time the run took."""
        self._show_count(tiles, tiles)
        text = f"Done in {format_duration(elapsed_s)} ({tiles} tile{'' if tiles == 1 else 's'}). Review and save it below."
        if self.fit_warning.text():  # the image was not what the model was trained on: so says the result
            text += " Check it with care: the image differs from what the model was trained on (see above)."
        self.status.setText(text)
        self._set_timing("")
        self.reveal_next.emit()

    def show_ready(self) -> None:
        """An empty bar and 'Ready.': what the step said of an earlier run belonged to another image."""
        self._show_no_count()
        self.status.setText(READY_TEXT)
        self._set_timing("")

    def show_stopped(self, outcome: str) -> None:
        """An empty bar, without a count, and what happened: the run was "cancelled" or "failed"."""
        self._show_no_count()
        self.status.setText(STOPPED_TEXTS[outcome])
        self._set_timing("")

    def show_fit(self, sentences: list[str]) -> None:
        """Say above Run how the chosen image differs from what the model was trained on (nothing: hidden). The
        person may still run it: the words are a warning, not a refusal."""
        text = " ".join(sentence if sentence.endswith(".") else f"{sentence}." for sentence in sentences)
        appeared = bool(text) and not self.fit_warning.text()
        self.fit_warning.setText(f"Check this image: {text} The result may be wrong; you can still run it."
                                 if text else "")
        self.fit_warning.setVisible(bool(text))
        if appeared:  # the warning with Run under it
            self.bring_into_view.emit(self)

    def set_tile_note(self, text: str) -> None:
        """What the status line says after the tile count for the run that starts next (:data:`SLICE_FIRST_NOTE`,
        or :data:`TASK_NOTE` for a TotalSegmentator task)."""
        self._tile_note = text

    def show_message(self, text: str) -> None:
        """Say ``text`` on the status line."""
        self.status.setText(text)

    def start_activity(self, description: str, on_cancel: Callable[[], None] | None = None,
                       unit: str = "tile") -> None:
        """A bar in napari's activity panel, shown from the next timer tick (a quick task never shows one)."""
        self.close_activity()
        self.activity = ActivityProgress(description, on_cancel=on_cancel, unit=unit, viewer=self.viewer)
        self._schedule_progress()

    def close_activity(self) -> None:
        """Remove the bar from napari's activity panel."""
        activity, self.activity = self.activity, None
        if activity is not None:
            activity.close()

    def shutdown(self) -> None:
        """Stop the updates and remove the activity bar (the window is closing)."""
        self._progress_timer.stop()
        self.close_activity()

    # ---- internals ------------------------------------------------------------------------------
    def _schedule_progress(self) -> None:
        if not self._progress_timer.isActive():
            self._progress_timer.start()

    def _paint_now(self) -> None:
        """Paint the button, the bar and the status line at once: the click that started the run goes on with work
        on this thread (napari building the preview layer) before the event loop would paint them."""
        for widget in (self.run_button, self.progress, self.status, self.timing):
            widget.repaint()

    def _set_timing(self, text: str) -> None:
        """The timing line, hidden while empty (the dock stays short)."""
        self.timing.setText(text)
        self.timing.setVisible(bool(text))

    def _show_no_count(self) -> None:
        """An empty bar with no text: no run, or one that ended without a result."""
        self.progress.setFormat("")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    def _show_count(self, done: int, total: int) -> None:
        total = max(int(total), 1)
        self.progress.setFormat(COUNT_FORMAT)
        if self.progress.maximum() != total or self.progress.minimum() != 0:
            self.progress.setRange(0, total)
        self.progress.setValue(min(int(done), total))

    def _counting(self) -> bool:
        return self._state in RUN_STATES and self._latest_tile is not None and not self._all_tiles_done

    def _update_progress(self) -> None:
        """Show the latest tile in napari's activity panel, then the count it shows in the dock."""
        activity = self.activity
        event = self._latest_tile
        if activity is not None and self._state in RUN_STATES:
            if self._state is State.CANCELLING:
                activity.set_busy("Tilewise: cancelling")
            elif self._all_tiles_done:
                activity.set_busy("Tilewise: writing labels on the input grid")
            elif event is not None:
                activity.set_progress(event.done, event.total)
        if activity is not None and not activity.apply():
            self._schedule_progress()  # the activity panel shows counts less often: this one comes later
        if not self._counting():  # also when the run ended while napari processed events inside apply()
            return
        event = self._latest_tile
        shown = activity.shown_count() if activity is not None and not activity.closed else None
        done, total = shown if shown is not None and shown[1] == event.total else (event.done, event.total)
        if done != event.done:
            self._schedule_progress()
        self._show_tile_progress(done, total, event.eta_s)

    def _show_tile_progress(self, done: int, total: int, engine_eta_s: float) -> None:
        self._show_count(done, total)
        if self._state is not State.CANCELLING:
            self.status.setText(f"Segmenting: {done} of {total} tiles done. {self._tile_note}")
        now = self._clock()
        left = self._remaining.update(done, total, now, engine_eta_s)
        self._set_timing(f"Elapsed {format_duration(now - self._run_started)} · about {format_duration(left)} left")

"""Run/Cancel and the run's progress: a tile bar, what happens in words and the time, also in napari's activity panel.

A tile's progress is shown from a timer, at most ~10 times a second: a text change lays out the dock again, and
napari's bar processes events when updated.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..controllers.run import RUN_STATES, State
from .activity import ActivityProgress

PROGRESS_INTERVAL_MS = 100
FINISHING_TEXT = "Finishing: writing labels on the input grid…"
STOPPED_TEXTS = {"cancelled": "Cancelled. No labels were kept.",
                 "failed": "The segmentation did not run (see the message)."}


def format_duration(seconds: float) -> str:
    """'0:07', '2:05', '1:02:05'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunPanel(QWidget):
    """The Run/Cancel button, the tile progress bar, a status line and the timing; and the bar of the task going on
    (a run, or an image being opened) in napari's activity panel."""

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.activity: ActivityProgress | None = None
        self._state = State.IDLE
        self._latest_tile: Any = None
        self._all_tiles_done = False
        self._stage_text = ""

        import qtawesome

        self._icons = {
            "run": qtawesome.icon("fa5s.play", color="#3cb44b"),
            "cancel": qtawesome.icon("fa5s.stop", color="#e6194b"),
        }
        self.run_button = QPushButton()
        self.run_button.setMinimumHeight(36)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v of %m tiles")
        self.progress.setTextVisible(True)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.timing = QLabel("")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
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
            self._stage_text = ""
            self.progress.setRange(0, 0)  # busy until the first tile reports the total
            self.timing.setText("")
        elif state is State.CANCELLING:
            self.status.setText(self.cancelling_text())
            self._schedule_progress()
        elif state is State.FINISHING:
            self.status.setText(FINISHING_TEXT)
        elif state is State.IDLE:
            self._latest_tile = None
            self._progress_timer.stop()
            self.close_activity()

    def show_stage(self, text: str) -> None:
        """What the run does before its first tile (a cancelling run keeps saying that it is cancelling)."""
        self._stage_text = text
        if self._state is not State.CANCELLING:
            self.status.setText(text)

    def cancelling_text(self) -> str:
        """What a cancelling run waits for: the step before the first tile, the tile that runs, or the export."""
        if self._all_tiles_done:
            return "Cancelling: stopping after the current slab of the result…"
        if self._latest_tile is None:
            step = (self._stage_text or "Loading the model…").rstrip("…").lower()
            return f"Cancelling: {step} stops at its next step…"
        return "Cancelling: waiting for the current tile to finish…"

    def show_tile(self, event: Any) -> None:
        """Note the latest tile; the texts and bars follow at most ~10 times a second."""
        self._latest_tile = event
        if event.done >= event.total and not self._all_tiles_done:
            self._all_tiles_done = True  # the labels go back on the input grid now: a busy bar, no steps to count
            self.progress.setRange(0, 0)
            self.timing.setText(f"All {event.total} tiles done in {format_duration(event.elapsed_s)}")
        self._schedule_progress()

    def show_done(self, elapsed_s: float, tiles: int) -> None:
        """A full bar and the time the run took."""
        self.progress.setRange(0, max(tiles, 1))
        self.progress.setValue(max(tiles, 1))
        self.status.setText(f"Done in {format_duration(elapsed_s)} ({tiles} tiles). "
                            "Review the volumes below; Save segmentation… writes the labels to a file.")
        self.timing.setText("")

    def show_stopped(self, outcome: str) -> None:
        """An empty bar and what happened: the run was "cancelled" or "failed"."""
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(STOPPED_TEXTS[outcome])
        self.timing.setText("")

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

    def _update_progress(self) -> None:
        """Show the latest tile in the dock and in napari's activity panel."""
        running = self._state in RUN_STATES
        if running:
            self._show_tile_progress()
        activity = self.activity
        if activity is None:
            return
        event = self._latest_tile
        if running:
            if self._state is State.CANCELLING:
                activity.set_busy("Tilewise: cancelling")
            elif self._all_tiles_done:
                activity.set_busy("Tilewise: writing labels on the input grid")
            elif event is not None:
                activity.set_progress(event.done, event.total)
        if not activity.apply():
            self._schedule_progress()  # the activity panel shows counts less often: this one comes later

    def _show_tile_progress(self) -> None:
        event = self._latest_tile
        if event is None or self._all_tiles_done:
            return
        if self.progress.maximum() != event.total:
            self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        if self._state is not State.CANCELLING:
            self.status.setText(f"Segmenting: tile {event.done} of {event.total}. The slice on screen runs first.")
        self.timing.setText(f"Elapsed {format_duration(event.elapsed_s)} · about {format_duration(event.eta_s)} left")

"""What the dock is doing, as one state machine, and the engine run it drives on a worker thread.

One state at a time, announced by ``state_changed``::

    IDLE --open--> OPENING --read, or failed--> IDLE
    IDLE --save--> SAVING --written, or failed--> IDLE
    IDLE --start--> LOADING --first tile--> RUNNING --last tile--> FINISHING --result--> IDLE
    LOADING, RUNNING, FINISHING --cancel--> CANCELLING --the worker's last signal--> IDLE
    LOADING, RUNNING, FINISHING --failed--> IDLE
    FINISHING --a task's next stage reports more tiles--> RUNNING

LOADING: the worker loads the model and prepares the image (no tile yet; a one-tile run goes straight to
FINISHING). FINISHING: every tile has run and the engine puts the labels back on the input grid, with no steps to
count (a TotalSegmentator task that crops first finishes its crop stage, then runs its own: its count grows). OPENING and SAVING are claimed by the files controller, so nothing else starts while a file is read or
written.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from qtpy.QtCore import QObject, Signal

from .. import _gc
from ..layers import META_ALGORITHM, META_COUNTS, META_DICOM_FILES, META_PRESET, LivePreview
from ..task_models import META_RUN_COUNTS, META_STATISTICS, META_TASK
from .worker import PredictorCache, RunRequest, SegmentationWorker


class State(str, Enum):
    """What the dock is doing."""

    IDLE = "idle"
    OPENING = "opening"
    LOADING = "loading"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FINISHING = "finishing"
    SAVING = "saving"


RUN_STATES = frozenset({State.LOADING, State.RUNNING, State.CANCELLING, State.FINISHING})
"""The states of a run: from Run until it has ended (done, cancelled or failed); a worker exists."""

_NEXT: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.OPENING, State.SAVING, State.LOADING}),
    State.OPENING: frozenset({State.IDLE}),
    State.SAVING: frozenset({State.IDLE}),
    State.LOADING: frozenset({State.RUNNING, State.FINISHING, State.CANCELLING, State.IDLE}),
    State.RUNNING: frozenset({State.FINISHING, State.CANCELLING, State.IDLE}),
    State.FINISHING: frozenset({State.RUNNING, State.CANCELLING, State.IDLE}),
    State.CANCELLING: frozenset({State.IDLE}),
}


class RunController(QObject):
    """The dock's state, and one run at a time: the worker, the preview it fills in, the result it leaves.

    Also the garbage-collection policy: no full collection while a run goes on (see :mod:`tilewise.gui._gc`).
    """

    state_changed = Signal(str)         # the new State's value
    started = Signal(object)            # the SegmentationWorker, before it starts (connect to its signals)
    stage = Signal(str)                 # what the worker does before the first tile ("Loading the model…")
    loading = Signal(object)            # a LoadEvent while the model loads (fold k of n, a conversion)
    tile = Signal(object)               # a TileEvent, after the preview has queued its labels
    succeeded = Signal(object, object)  # RunRequest, Result: ``result_layer`` is set; still in a run state
    finished = Signal(str)              # "done", "cancelled" or "failed", once the state is IDLE again
    failed = Signal(str, str, object)   # RunFailure kind, plain message, model folder: right after ``finished``

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = State.IDLE
        self.cache = PredictorCache()
        self.worker: SegmentationWorker | None = None
        self.preview: LivePreview | None = None
        self.result_layer: Any = None
        """The labels layer the last finished run left (the results controller decides what becomes of it)."""
        self.layers: list[Any] = []
        """The image layers of the current (or last) run, one per channel."""
        self._started = 0.0
        self._resume_gc_once: Callable[[], None] | None = None

    @property
    def elapsed_s(self) -> float:
        """Seconds since the current (or last) run started."""
        return time.perf_counter() - self._started

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"no transition from {self.state.value} to {state.value}")
        self.state = state
        self.state_changed.emit(state.value)

    # ---- file tasks ---------------------------------------------------------------------------------
    def enter(self, state: State) -> bool:
        """Claim OPENING or SAVING for a file being read or written; False (nothing changes) unless idle."""
        if state not in (State.OPENING, State.SAVING):
            raise ValueError(f"{state.value} is not a file task")
        if self.state is not State.IDLE:
            return False
        self._set_state(state)
        return True

    def leave(self, state: State) -> None:
        """The file task of ``state`` has ended: back to IDLE."""
        if self.state is state:
            self._set_state(State.IDLE)

    # ---- runs ---------------------------------------------------------------------------------------
    def start(self, request: RunRequest, layers: list[Any], focus: tuple[int, int] | None) -> bool:
        """Start a worker for ``request`` (image ``layers``; tiles under ``focus``, an (axis, index) input slice,
        first); ``started`` is emitted before it starts. False (nothing started) unless idle."""
        if self.state is not State.IDLE:
            return False
        worker = SegmentationWorker(request, self.cache)
        # no full garbage collection (a freeze of half a second) while the run goes on; the pause ends with the
        # worker's 'finished', also if this controller is gone by then (the window closed mid-run)
        self._resume_gc_once = _gc.pause_full_collections()
        worker.finished.connect(self._resume_gc_once)
        worker.stage.connect(self.stage)
        worker.loading.connect(self.loading)
        worker.tile.connect(self._on_tile)
        worker.succeeded.connect(self._on_succeeded)
        worker.cancelled.connect(self._on_cancelled)
        worker.failed.connect(self._on_failed)
        self.worker = worker
        self.layers = list(layers)
        if focus is not None:
            worker.focus_on_slice(*focus)
        self._set_state(State.LOADING)
        self.started.emit(worker)
        self._started = time.perf_counter()
        worker.start()
        return True

    def attach_preview(self, preview: LivePreview) -> None:
        """The labels layer the run's tiles fill in. Made after :meth:`start`: the worker's signals wait in the GUI
        thread's queue until the caller returns, so no tile can arrive before the layer is there."""
        self.preview = preview

    def focus_on_slice(self, axis: int, index: int) -> None:
        """Run the tiles under this input slice first (while a run goes on)."""
        if self.worker is not None:
            self.worker.focus_on_slice(axis, index)

    def cancel(self) -> None:
        """Stop the current run before its next batch; its partial labels are removed."""
        if self.worker is None or self.state not in (State.LOADING, State.RUNNING, State.FINISHING):
            return
        self.worker.cancel()
        self._set_state(State.CANCELLING)

    def clear_cache(self, *_: object) -> None:
        """Drop the loaded model (the next run loads it again)."""
        self.cache.clear()

    def shutdown(self) -> None:
        """Cancel a run and wait for it, at most a second (the window is closing; superqt awaits the rest at quit)."""
        worker = self.worker
        if worker is not None:
            for signal in (worker.stage, worker.loading, worker.tile, worker.succeeded, worker.cancelled,
                           worker.failed):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass
            worker.stop_and_wait()
            self.worker = None
        self._resume_gc()
        if self.state in RUN_STATES:
            self._set_state(State.IDLE)

    # ---- worker signals (GUI thread) ----------------------------------------------------------------
    def _on_tile(self, event: Any) -> None:
        """Queue the tile's labels for the preview; the texts and bars follow at most ~10 times a second."""
        if self.preview is None or self.worker is None:
            return
        self.preview.add(event.input_box, event.labels)
        if event.done >= event.total and self.state in (State.LOADING, State.RUNNING):
            # every tile has run: the engine now puts the labels back on the input grid, with no steps to count
            self._set_state(State.FINISHING)
        elif self.state is State.LOADING or (self.state is State.FINISHING and event.done < event.total):
            self._set_state(State.RUNNING)
        self.tile.emit(event)

    def _on_succeeded(self, result: Any, counts: dict[int, int]) -> None:
        request = self.worker.request
        if self.preview is not None:
            task = {META_TASK: request.task.model_name, META_STATISTICS: result.statistics,
                    META_RUN_COUNTS: dict(counts)} if request.task is not None else {}
            self.result_layer = self.preview.finish(result.labels, {
                META_COUNTS: dict(counts), META_PRESET: request.preset.name,
                META_DICOM_FILES: [str(path) for path in request.dicom_files],
                META_ALGORITHM: self.worker.algorithm, **task})
            self.preview = None
        self.succeeded.emit(request, result)
        self._end("done")

    def _on_cancelled(self) -> None:
        self._discard_preview()
        self._end("cancelled")

    def _on_failed(self, kind: str, message: str) -> None:
        self._discard_preview()
        model_dir = self.worker.request.model_dir
        self._end("failed")
        self.failed.emit(kind, message, model_dir)

    def _discard_preview(self) -> None:
        if self.preview is not None:
            self.preview.discard()
            self.preview = None

    def _end(self, outcome: str) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            # it has emitted its outcome; wait the microseconds until it has left its work, so the run has ended
            # when ``finished`` says so (superqt then drops the worker: nothing to delete here)
            worker.wait(10_000)
        self._resume_gc()
        self._set_state(State.IDLE)
        self.finished.emit(outcome)

    # ---- garbage collection -------------------------------------------------------------------------
    def _resume_gc(self) -> None:
        resume, self._resume_gc_once = self._resume_gc_once, None
        if resume is not None:
            resume()

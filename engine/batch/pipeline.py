"""The batch pipeline in one process: while the device runs case k, workers read and preprocess case k+1 and export
and write case k-1.

Threads, not processes: the model is loaded once, and the work that overlaps is numpy, SimpleITK, zlib, torch and
OpenVINO code that releases the GIL. The sliding window does not keep every core busy all the time (between forward
passes a batch of tiles is gathered and its logits added, and single-threaded steps such as decompressing an input
or compressing labels leave cores idle); reading, resampling and writing other cases fill those gaps instead of
running after the sliding window. How much that gains depends on the share of the time outside the sliding window.

- ``workers`` reader threads: read a case, plan its memory, wait for admission, preprocess, hand it to the device;
- one device thread: the sliding window, one case at a time (the predictor's backend is not shared);
- ``workers`` writer threads: export and write, then the case's record goes to the caller.

In flight at most: ``workers`` cases being read or preprocessed, one waiting for the device, one on it, one waiting
for export and ``workers`` being exported, and never more than the memory budget holds: a case is admitted to
preprocessing only when its planned peak fits next to the planned peaks of the cases already in flight (a case
that fits alone always runs once it is the only one).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from ..events import CancelToken
from ..runtime.memory_plan import HEADROOM
from .cases import BatchCase
from .records import CaseRecord, CaseRun, problem_record
from .stages import CaseStages

POLL_S = 0.1
"""How often a waiting thread looks at the cancel token."""
_END = None


class MemoryGate:
    """Admits cases while their planned (host, device) peaks fit together in the budget's share of memory."""

    def __init__(self, host_bytes: int, device_bytes: int) -> None:
        self._limits = (int(host_bytes * HEADROOM), int(device_bytes * HEADROOM))
        self._used = [0, 0]
        self._in_flight = 0
        self._changed = threading.Condition()

    def admit(self, peaks: tuple[int, int], cancel: CancelToken) -> bool:
        """Wait until ``peaks`` fit next to the cases in flight (or none is in flight); False when cancelled."""
        with self._changed:
            while self._in_flight and not self._fits(peaks):
                if cancel.cancelled:
                    return False
                self._changed.wait(POLL_S)
            self._used = [used + peak for used, peak in zip(self._used, peaks)]
            self._in_flight += 1
            return True

    def _fits(self, peaks: tuple[int, int]) -> bool:
        return all(used + peak <= limit for used, peak, limit in zip(self._used, peaks, self._limits))

    def release(self, peaks: tuple[int, int]) -> None:
        """A case admitted with ``peaks`` has left the pipeline."""
        with self._changed:
            self._used = [used - peak for used, peak in zip(self._used, peaks)]
            self._in_flight -= 1
            self._changed.notify_all()


class BatchPipeline:
    """Runs cases through ``stages`` on reader, device and writer threads; records come out as cases finish.

    ``worker`` names this process in the records; ``claim`` (see :mod:`.claims`), when given, is asked for each
    case just before it is read: a record from it (another process runs the case) is yielded instead of a run.
    :meth:`run` yields each case's record; after ``cancel`` is set, running stages stop at their next check, cases
    not yet started are not started, and every case comes out as interrupted unless it finished first.
    """

    def __init__(self, stages: CaseStages, workers: int, cancel: CancelToken, worker: str,
                 claim: Callable[[BatchCase], CaseRecord | None] | None = None) -> None:
        self.stages = stages
        self.claim = claim
        self.workers = max(1, workers)
        self.cancel = cancel
        self.worker = worker
        budget = stages.budget
        assert budget is not None, "a pipeline plans its cases against one budget"
        self.gate = MemoryGate(budget.host_bytes, budget.device_bytes)
        self._to_device: queue.Queue[CaseRun | None] = queue.Queue(maxsize=1)
        self._to_writer: queue.Queue[CaseRun | None] = queue.Queue(maxsize=1)
        self._records: queue.Queue[CaseRecord] = queue.Queue()
        self._pending: Iterator[BatchCase] = iter(())
        self._pending_lock = threading.Lock()
        self._readers_left = self.workers
        self._threads: list[threading.Thread] = []

    def run(self, cases: list[BatchCase]) -> Iterator[CaseRecord]:
        """Start the threads and yield one record per case as it finishes (in the order they finish).

        The caller may set the cancel token at any time (e.g. on Ctrl-C) and must then call :meth:`join`.
        """
        self._pending = iter(cases)
        self._threads = [self._thread(self._read_loop, f"tilewise-read-{n}") for n in range(self.workers)]
        self._threads.append(self._thread(self._device_loop, "tilewise-device"))
        self._threads += [self._thread(self._write_loop, f"tilewise-write-{n}") for n in range(self.workers)]
        for _ in cases:
            while True:
                try:
                    yield self._records.get(timeout=POLL_S)
                    break
                except queue.Empty:
                    if not any(thread.is_alive() for thread in self._threads) and self._records.empty():
                        return  # cancelled: the cases never started have no record from the threads
        self.join()

    def join(self) -> list[CaseRecord]:
        """Wait for every thread to end; the records not yet yielded (cases that ended while cancelling)."""
        for thread in self._threads:
            thread.join()
        left: list[CaseRecord] = []
        while not self._records.empty():
            left.append(self._records.get())
        return left

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name)
        thread.start()
        return thread

    def _next_case(self) -> BatchCase | None:
        with self._pending_lock:
            if self.cancel.cancelled:
                return None
            return next(self._pending, None)

    def _done(self, run: CaseRun, admitted: bool) -> None:
        if admitted:
            self.gate.release(run.item.planned_peaks)
        self._records.put(run.finish())

    def _read_loop(self) -> None:
        try:
            while (case := self._next_case()) is not None:
                if case.problem is not None:
                    self._records.put(problem_record(case, self.stages.with_probabilities, self.worker,
                                                     self.stages.with_uncertainty))
                    continue
                elsewhere = self.claim(case) if self.claim is not None else None
                if elsewhere is not None:
                    self._records.put(elsewhere)
                    continue
                run = CaseRun(self.stages, case, self.worker)
                if not run.stage("read", self.cancel):
                    self._done(run, admitted=False)
                    continue
                if not self.gate.admit(run.item.planned_peaks, self.cancel):
                    run.interrupted()
                    self._done(run, admitted=False)
                    continue
                if run.stage("preprocess", self.cancel):
                    self._to_device.put(run)  # the device thread drains its queue, also when cancelled
                else:
                    self._done(run, admitted=True)
        finally:
            with self._pending_lock:
                self._readers_left -= 1
                last = self._readers_left == 0
            if last:
                self._to_device.put(_END)

    def _device_loop(self) -> None:
        try:
            while (run := self._to_device.get()) is not _END:
                if self.cancel.cancelled:
                    run.interrupted()
                if not run.ended and run.stage("sliding_window", self.cancel):
                    self._to_writer.put(run)
                else:
                    self._done(run, admitted=True)
        finally:
            for _ in range(self.workers):
                self._to_writer.put(_END)

    def _write_loop(self) -> None:
        while (run := self._to_writer.get()) is not _END:
            if self.cancel.cancelled:
                run.interrupted()
            if not run.ended and run.stage("export", self.cancel):
                run.stage("write", self.cancel)
            self._done(run, admitted=True)

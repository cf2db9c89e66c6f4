"""A label file's rows compressed and written on a thread of their own, in order, beside the work that makes them.

Why: compressing a 512 x 512 row of labels takes about 5 ms of one core (zlib, level 3); on the export thread that
was a seventh of the streaming export's last rows. zlib and the file's writes let go of Python's lock, so the next
rows are resampled meanwhile.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from ..runtime.worker_queue import hand_over, stop_worker
from .slab_file import SlabLabelFile

PENDING_ROWS = 4
"""Row blocks that may wait for the writer (each a few rows of labels: a few MB at most); a writer that falls
behind makes :meth:`RowWriter.write` wait, so the memory stays bounded."""


class RowWriter:
    """Writes a :class:`~.slab_file.SlabLabelFile`'s rows on a thread of its own: :meth:`write` hands a block over
    (the caller must not change it afterwards), :meth:`commit` waits for the last and publishes the file,
    :meth:`abort` stops the thread and abandons the file. An error of the writer is raised by the next call."""

    def __init__(self, file: SlabLabelFile) -> None:
        self.file = file
        self.path: Path = file.path
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=PENDING_ROWS)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="tilewise-label-writer", daemon=True)
        self._thread.start()

    def write(self, rows: np.ndarray) -> None:
        """Queue the next ``(rows, y, x)`` block; waits while :data:`PENDING_ROWS` blocks are queued."""
        hand_over(self._queue, rows, self._raise_error)

    def commit(self) -> None:
        """Wait for every queued block, then check and publish the file (:meth:`SlabLabelFile.commit`)."""
        stop_worker(self._queue, self._thread)
        self._raise_error()
        self.file.commit()

    def abort(self) -> None:
        """Stop writing and abandon the file: nothing is left under its name."""
        self._stop.set()
        stop_worker(self._queue, self._thread)
        self.file.abort()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        rows = self._queue.get()
        while rows is not None:
            if self._error is None and not self._stop.is_set():
                try:
                    self.file.write(rows)
                except BaseException as error:  # noqa: BLE001 - raised on the caller's thread at its next call
                    self._error = error
            rows = self._queue.get()

"""Export overlapped with the sliding window: final network rows become labels on a second thread.

A streaming sliding window (:meth:`~tilewise.engine.sliding.runner.SlidingWindowRunner.run_streaming`) hands out
its rows as they become final, first to last. :class:`StreamingExport` keeps the few it still needs (the
resampler's halo: :meth:`~.resample.LogitResampler.input_rows`), resamples every output slab whose input rows have
all arrived, and writes its labels (and probabilities, and the uncertainty map) through the same
:class:`~.export.LabelSink` and :func:`~.export.slab_of` as the whole-volume export, while the next tiles run (on a
CUDA device on a stream of its own: :mod:`~tilewise.engine.runtime.side_stream`). After the last tile only the last
slab is left to do.
"""
from __future__ import annotations

import contextvars
import queue
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..data.volume import Geometry
from ..errors import OutOfMemoryError
from ..events import check_cancelled
from ..model.bundle import ModelBundle
from ..runtime.memory import free_device_memory, is_out_of_memory
from ..runtime.side_stream import Handoff, side_stream
from .export import Exported, LabelSink, export_slab_rows, slab_of
from .resample import LogitResampler

PENDING_UPDATES = 1
"""Released row ranges that may wait for the export thread; the sliding window waits beyond that, which bounds the
memory of rows in flight when the export is slower than the tiles (one: on a 2-core CPU the export and the tiles
share the cores, so a longer queue holds memory without finishing sooner)."""


class StreamingExport:
    """Labels on the input grid from a streaming sliding window's final rows, written on a thread of its own.

    ``unpadded``: the network grid's rows and columns without nnU-Net's padding (the resampler's input grid is the
    unpadded one); ``resampler`` maps it to the cropped input grid; ``slab_bytes`` caps one slab's working memory
    (the uncertainty map's work included when ``with_uncertainty``); ``labels_file``: the labels go to that file slab
    by slab (see :class:`~.export.LabelSink`), published by :meth:`close` and removed by :meth:`abort`.
    :meth:`put` takes rows in order (from the sliding window's thread), :meth:`close` waits for the last slab and
    returns the :class:`~.export.Exported`; :meth:`abort` stops at once. The export thread runs in the caller's
    context, so the current cancel token stops it between slabs too.
    """

    def __init__(self, bundle: ModelBundle, properties: dict[str, Any], unpadded: tuple[slice, ...],
                 resampler: LogitResampler, with_probabilities: bool, slab_bytes: int,
                 with_uncertainty: bool = False, labels_file: tuple[Path, Geometry] | None = None) -> None:
        self.sink = LabelSink(bundle, properties, with_probabilities, with_uncertainty, labels_file)
        self.resampler = resampler
        self.unpadded = unpadded
        heads = int(bundle.label_manager.num_segmentation_heads)
        self.max_rows = export_slab_rows(resampler, heads, slab_bytes, with_uncertainty)
        self.agreement = self.sink.agreement(resampler)
        self.busy_seconds = 0.0
        """Seconds the export thread spent resampling and writing (overlapped with the tiles)."""
        self.notes: list[str] = []
        self._held: list[tuple[int, torch.Tensor]] = []
        """Rows received and still needed, as (first unpadded row, rows) pieces in order: kept as received rather than
        joined, since joining would copy them all at every release (the last release is the whole ring)."""
        self._next_out = 0
        self._on_host = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[int, Handoff] | None] = queue.Queue(maxsize=PENDING_UPDATES)
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._work,), name="tilewise-export", daemon=True)
        self._thread.start()

    def put(self, first_row: int, rows: torch.Tensor) -> None:
        """Final rows ``first_row``, ``first_row + 1``, ... of the padded network grid (heads, rows, y, x); waits
        while :data:`PENDING_UPDATES` are queued. Raises what the export thread raised."""
        handoff = Handoff.of(rows)
        while True:
            self._raise_error()
            try:
                self._queue.put((first_row, handoff), timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> Exported:
        """Wait for the last slab; the labels (and probabilities, and the uncertainty map) in the input's axis order."""
        self._queue.put(None)
        self._thread.join()
        self._raise_error()
        assert self._next_out == self.resampler.out_shape[0], "every row of the grid must have been put"
        return self.sink.result()

    def abort(self) -> None:
        """Stop the export thread and drop what it holds (a cancelled or failed run)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._held = []
        self.sink.abort()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        try:
            item = self._queue.get()
            device = item[1].tensor.device if item is not None else torch.device("cpu")
            with torch.inference_mode(), side_stream(device):  # on CUDA, beside the tiles' stream
                while item is not None:
                    if not self._stop.is_set():
                        started = time.perf_counter()
                        self._take(item[0], item[1].receive())
                        self.busy_seconds += time.perf_counter() - started
                    del item
                    item = self._queue.get()
        except BaseException as error:  # noqa: BLE001 - handed to the sliding window's thread at its next put or at close
            self._error = error
            self._stop.set()
            while self._queue.get() is not None:  # unblock the producer until it stops
                continue

    def _take(self, first_row: int, rows: torch.Tensor) -> None:
        """Keep the unpadded part of ``rows``, then export every output slab whose input rows have all arrived."""
        top, bottom = self.unpadded[0].start, self.unpadded[0].stop
        low, high = max(first_row, top), min(first_row + rows.shape[1], bottom)
        if high <= low:
            return
        piece = rows[(slice(None), slice(low - first_row, high - first_row), *self.unpadded[1:])]
        if self._on_host:
            piece = piece.cpu()
        self._held.append((low - top, piece))
        self._export_ready()

    def _held_end(self) -> int:
        first, rows = self._held[-1]
        return first + rows.shape[1]

    def _rows(self, low: int, high: int) -> torch.Tensor:
        """Held rows [low, high): a view where one piece holds them all, else a copy of just those rows."""
        parts = []
        for first, rows in self._held:
            start, stop = max(low, first), min(high, first + rows.shape[1])
            if start < stop:
                parts.append(rows[:, start - first:stop - first])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _export_ready(self) -> None:
        ready = self.resampler.rows_ready(self._held_end())
        while self._next_out < ready:
            if self._stop.is_set():
                return
            stop = min(ready, self._next_out + self.max_rows)
            self._write(self._next_out, stop)
            self._next_out = stop
        if self._next_out < self.resampler.out_shape[0]:  # drop the rows no later slab reads
            keep = self.resampler.input_rows(self._next_out, self._next_out + 1)[0]
            self._held = [_rows_from(first, rows, keep) for first, rows in self._held if first + rows.shape[1] > keep]

    def _write(self, start: int, stop: int) -> None:
        """One slab; when device memory runs out, the held rows move to the host and it runs again there."""
        check_cancelled()
        low, high = self.resampler.input_rows(start, stop)
        try:
            self.sink.write(slab_of(self.resampler, self._rows(low, high), start, stop, low, self.agreement))
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if self._on_host:
                raise OutOfMemoryError("export", "out of memory while writing labels on the input grid; close "
                                                 "other programs or use a machine with more memory") from None
            device = self._held[0][1].device
            self._held, self._on_host = [(first, rows.cpu()) for first, rows in self._held], True
            free_device_memory(device)
            self.notes.append("device memory ran out during export: resampled on the host instead")
            self.sink.write(slab_of(self.resampler, self._rows(low, high), start, stop, low, self.agreement))


def _rows_from(first: int, rows: torch.Tensor, keep: int) -> tuple[int, torch.Tensor]:
    """A held piece (rows ``first``, ``first + 1``, ...) from row ``keep`` on: a copy of those rows when it starts
    earlier, so that a released slab's memory goes once only its last rows (the resampler's halo) are still needed."""
    if keep <= first:
        return first, rows
    return keep, rows[:, keep - first:].clone()


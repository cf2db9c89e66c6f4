"""Export overlapped with the sliding window: final network rows become labels on a second thread.

A streaming sliding window (:meth:`~tilewise.engine.sliding.runner.SlidingWindowRunner.run_streaming`) hands out
its rows as they become final, first to last. :class:`StreamingExport` keeps the few it still needs (the
resampler's halo: :meth:`~.resample.LogitResampler.input_rows`), resamples every output slab whose input rows have
all arrived, and writes its labels (and probabilities, and the uncertainty map) through the same
:class:`~.export.LabelSink` and :func:`~.export.slab_of` as the whole-volume export, while the next tiles run (on a
CUDA device on a stream of its own: :mod:`~tilewise.engine.runtime.side_stream`).

The rows under the last row of tiles are all touched by its last tile, so they come differently
(:meth:`StreamingExport.put_plane`): as the ring's own rows, again after each of that row's tiles with the columns
that tile left final (:mod:`~tilewise.engine.sliding.plane_release`). A labels-only export resamples the output
windows that read only final columns (:mod:`.resample_window`) and the label sink holds each file row until it is
whole; before the last tile the sliding window waits for the export to finish what is final. After the last tile
only the output voxels that read its own columns are left. With probabilities or the uncertainty map, those rows
are exported whole after the last tile (their values are then the whole-volume export's, bit for bit).
"""
from __future__ import annotations

import contextvars
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.volume import Geometry
from ..errors import OutOfMemoryError
from ..events import check_cancelled
from ..model.bundle import ModelBundle
from ..runtime.memory import free_device_memory, is_out_of_memory
from ..runtime.side_stream import Handoff, side_stream
from ..runtime.worker_queue import hand_over, stop_worker
from ..sliding.plane_release import new_boxes
from .export import Exported, LabelSink, Slab, export_slab_rows, slab_of, window_magnitude, window_slab_of
from .resample import LogitResampler
from .resample_window import WindowResampler, rows_per_window

_Update = tuple[list[tuple[int, Handoff]], "np.ndarray | None"]
"""What the sliding window's thread hands over: (first grid row, rows) pieces and, for the last rows, the columns
final in them (:meth:`StreamingExport.put_plane`), else None (all of them)."""

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
        self._heads, self._slab_bytes = heads, slab_bytes
        self.agreement = self.sink.agreement(resampler)
        self.busy_seconds = 0.0
        """Seconds the export thread spent resampling and writing (overlapped with the tiles)."""
        self.notes: list[str] = []
        self._held: list[tuple[int, torch.Tensor]] = []
        """Rows received and still needed, as (first unpadded row, rows) pieces in order: kept as received rather than
        joined, since joining would copy them all at every release (the last release is the whole ring)."""
        self._next_out = 0
        self._tail_columns: np.ndarray | None = None
        """Per output y, the leading output x of the last rows (from :attr:`_next_out` on) exported so far, once
        they have begun to arrive (:meth:`put_plane`)."""
        self._windows = WindowResampler(resampler)
        self.by_windows = self.sink.probabilities is None and self.sink.uncertainty is None
        """Whether the last rows are exported window by window as their columns become final (labels only: the
        probabilities and the uncertainty map are the whole-row export's values, bit for bit)."""
        self._on_host = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._handled = threading.Condition()
        self._updates_put = 0
        self._updates_done = 0
        """Updates handed over and updates the export thread has finished (for :meth:`put_plane`'s ``settle``)."""
        self._queue: queue.Queue[_Update | None] = queue.Queue(maxsize=PENDING_UPDATES)
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._work,), name="tilewise-export", daemon=True)
        self._thread.start()

    def put(self, first_row: int, rows: torch.Tensor) -> None:
        """Final rows ``first_row``, ``first_row + 1``, ... of the padded network grid (heads, rows, y, x); waits
        while :data:`PENDING_UPDATES` are queued. Raises what the export thread raised."""
        self._put(([(first_row, Handoff.of(rows))], None))

    def put_plane(self, pieces: list[tuple[int, torch.Tensor]], final_columns: np.ndarray,
                  settle: bool = False) -> None:
        """The grid's last rows as (first row, rows) pieces of the window's ring, with per padded grid y row the
        leading x columns that are final (:meth:`~tilewise.engine.sliding.window.SlabWindow.release_plane`); called
        again with the same pieces as more columns become final, the last time with all of them. Waits and raises
        as :meth:`put` does; with ``settle``, also until everything handed over so far is exported (the sliding
        window settles before its last batch, so that after it only that batch's own part is left to export)."""
        self._put(([(first, Handoff.of(rows)) for first, rows in pieces], np.array(final_columns, copy=True)))
        if settle:
            with self._handled:
                while self._updates_done < self._updates_put:
                    self._raise_error()
                    self._handled.wait(timeout=0.1)
            self._raise_error()

    def _put(self, update: _Update) -> None:
        hand_over(self._queue, update, self._raise_error)
        self._updates_put += 1

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
        stop_worker(self._queue, self._thread)
        self._held = []
        self.sink.abort()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        try:
            item = self._queue.get()
            device = item[0][0][1].tensor.device if item is not None else torch.device("cpu")
            with torch.inference_mode(), side_stream(device):  # on CUDA, beside the tiles' stream
                while item is not None:
                    if not self._stop.is_set():
                        started = time.perf_counter()
                        pieces, columns = item
                        if columns is None:
                            self._take(pieces[0][0], pieces[0][1].receive())
                        else:
                            self._take_plane([(first, handoff.receive()) for first, handoff in pieces], columns)
                        self.busy_seconds += time.perf_counter() - started
                    del item
                    with self._handled:
                        self._updates_done += 1
                        self._handled.notify_all()
                    item = self._queue.get()
        except BaseException as error:  # noqa: BLE001 - handed to the sliding window's thread at its next put or at close
            self._error = error
            self._stop.set()
            while self._queue.get() is not None:  # unblock the producer until it stops
                continue

    def _take(self, first_row: int, rows: torch.Tensor) -> None:
        """Keep the unpadded part of ``rows``, then export every output slab whose input rows have all arrived."""
        if self._keep(first_row, rows):
            self._export_ready()

    def _keep(self, first_row: int, rows: torch.Tensor) -> bool:
        """Hold the unpadded part of ``rows`` (grid rows ``first_row``, ...); False if all of them are padding."""
        top, bottom = self.unpadded[0].start, self.unpadded[0].stop
        low, high = max(first_row, top), min(first_row + rows.shape[1], bottom)
        if high <= low:
            return False
        piece = rows[(slice(None), slice(low - first_row, high - first_row), *self.unpadded[1:])]
        if self._on_host:
            piece = piece.cpu()
        self._held.append((low - top, piece))
        return True

    def _take_plane(self, pieces: list[tuple[int, torch.Tensor]], final_columns: np.ndarray) -> None:
        """The last rows with more of their columns final: export the output windows that read only final columns
        (every output row from :attr:`_next_out` on, row by row, so that each is whole as early as it can be)."""
        if self._tail_columns is None:  # the first call: the rows themselves arrive
            for first, rows in pieces:
                self._keep(first, rows)
            self._tail_columns = np.zeros(self.resampler.out_shape[1], dtype=np.int64)
        columns = self._output_columns(final_columns)
        everything = bool((columns >= self.resampler.out_shape[2]).all())
        if not self.by_windows:  # whole rows, once all of them are final
            if everything and self._next_out < self.resampler.out_shape[0]:
                self._export_ready()
            return
        boxes = new_boxes(self._tail_columns, columns)
        whole = [(0, self.resampler.out_shape[1], 0, self.resampler.out_shape[2])]
        # why: a window's size bound, found once over all the rows it will read rather than again for every slab
        sizes = [0.0 if boxes == whole else self._window_magnitude(box) for box in boxes]
        step = self.max_rows if boxes == whole else rows_per_window(
            self._windows, self._heads, self._slab_bytes, [((b[0], b[1]), (b[2], b[3])) for b in boxes])
        for start in range(self._next_out, self.resampler.out_shape[0], step):
            stop = min(start + step, self.resampler.out_shape[0])
            for (y_start, y_stop, x_start, x_stop), size in zip(boxes, sizes):
                window = None if boxes == whole else (slice(y_start, y_stop), slice(x_start, x_stop))
                self._write(start, stop, window, size)
        self._tail_columns = columns
        if everything:
            self._next_out = self.resampler.out_shape[0]

    def _window_magnitude(self, box: tuple[int, int, int, int]) -> float:
        """The largest size of a value that output window ``box`` reads in any row still to export."""
        low = self.resampler.input_rows(self._next_out, self._next_out + 1)[0]
        ys, xs = (box[0], box[1]), (box[2], box[3])
        return max(window_magnitude(self._windows, rows[:, max(0, low - first):], ys, xs)
                   for first, rows in self._held if first + rows.shape[1] > low)

    def _output_columns(self, final_columns: np.ndarray) -> np.ndarray:
        """Per output y, how many leading output x read only final input columns (``final_columns``: per padded grid
        y, the leading padded x that are final)."""
        ys, xs = self.unpadded[1], self.unpadded[2]
        inner = np.clip(final_columns[ys.start:ys.stop] - xs.start, 0, xs.stop - xs.start)
        y_low, y_high, _ = self.resampler.taps(1, 0, self.resampler.out_shape[1])
        _, x_high, _ = self.resampler.taps(2, 0, self.resampler.out_shape[2])
        return np.searchsorted(x_high, np.minimum(inner[y_low], inner[y_high]), side="left").astype(np.int64)

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

    def _write(self, start: int, stop: int, window: tuple[slice, slice] | None = None,
               magnitude: float = 0.0) -> None:
        """One slab (``window``: only that in-plane part of it, ``magnitude`` bounding its values' size); when device
        memory runs out, the held rows move to the host and it runs again there."""
        check_cancelled()
        low, high = self.resampler.input_rows(start, stop)
        try:
            self.sink.write(self._slab(start, stop, low, high, window, magnitude))
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
            self.sink.write(self._slab(start, stop, low, high, window, magnitude))

    def _slab(self, start: int, stop: int, low: int, high: int, window: tuple[slice, slice] | None,
              magnitude: float) -> Slab:
        rows = self._rows(low, high)
        if window is None:
            return slab_of(self.resampler, rows, start, stop, low, self.agreement)
        return window_slab_of(self._windows, rows, start, stop, low, window, magnitude)


def _rows_from(first: int, rows: torch.Tensor, keep: int) -> tuple[int, torch.Tensor]:
    """A held piece (rows ``first``, ``first + 1``, ...) from row ``keep`` on: a copy of those rows when it starts
    earlier, so that a released slab's memory goes once only its last rows (the resampler's halo) are still needed."""
    if keep <= first:
        return first, rows
    return keep, rows[:, keep - first:].clone()


"""The sliding-window loop: batches of tiles x mirrors x folds, Gaussian-weighted accumulation, events, cancel."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from ..backends import ForwardBackend
from ..errors import Cancelled, OutOfMemoryError
from ..preprocess.grid_mapping import GridMapper
from ..events import Box, EventHandler, FocusToken, TileEvent, cancel_requested
from ..runtime.memory import free_device_memory, is_out_of_memory
from .accumulators import Accumulator, Placement, placements
from .order import TileQueue
from .plan import Tile, plan_tiles
from .plane_release import final_columns, tail_start
from .window import SlabWindow, rows_final_after, window_rows


LabelConverter = Callable[[torch.Tensor], torch.Tensor]
Sums = TypeVar("Sums", Accumulator, SlabWindow)
RowsHandler = Callable[[int, torch.Tensor], None]
"""Receives final rows of a streaming run: (first grid row, averaged logits (heads, rows, y, x) in the sums' dtype)."""
PlaneHandler = Callable[[list[tuple[int, torch.Tensor]], np.ndarray, bool], None]
"""Receives the last rows of a streaming run after each batch of its last row of tiles: (first grid row, ring view
(heads, rows, y, x)) pieces, per grid y row how many leading x columns are final (averaged) in them
(:meth:`~.window.SlabWindow.release_plane`; every column on the last call), and whether the next batch is the last
(the handler may then finish its work on what is final first, so that after the last batch only its part is left)."""


def background_logits(num_heads: int, regions: bool) -> torch.Tensor:
    """Logits that every label rule reads as background: softmax picks head 0, sigmoid regions are all off."""
    values = torch.full((num_heads,), -10.0)
    if not regions:
        values[0] = 10.0
    return values


@dataclass
class SlidingResult:
    """What one sliding window produced and what it cost."""

    logits: torch.Tensor | None
    """The Gaussian-averaged logits (heads, z, y, x) in the sums' dtype (None for a streaming run: its rows went to
    the handler)."""
    tiles_run: int
    tiles_skipped: int
    forward_passes: int
    batch_size: int
    """The batch size that fitted (smaller than asked for when memory ran out)."""
    seconds: float
    notes: list[str] = field(default_factory=list)


class SlidingWindowRunner:
    """Runs every tile of one preprocessed case through a forward backend and accumulates logits.

    The backend forwards a batch of tiles through every fold and mirror. Tiles run in nnU-Net's order (the same
    float32 additions per voxel as nnU-Net), or the slice a :class:`~tilewise.engine.events.FocusToken` names first,
    which may move the last bit of a sum (see :mod:`.order`). ``skip_tile`` (optional) names tiles not to run at all;
    voxels that no run tile covers get ``background_logits`` (see :func:`background_logits`). ``placement_order``
    lists where the sums may live, most preferred first (default: every placement for the backend's device, see
    :mod:`.accumulators`); ``nnunet_order`` keeps nnU-Net's order even when a focus asks for a slice.
    """

    def __init__(
        self,
        backend: ForwardBackend,
        patch_size: tuple[int, ...],
        tile_step: float,
        batch_size: int,
        num_heads: int,
        to_labels: LabelConverter,
        background: torch.Tensor | None = None,
        skip_tile: Callable[[Tile], bool] | None = None,
        placement_order: list[Placement] | None = None,
        nnunet_order: bool = False,
    ) -> None:
        self.backend = backend
        self.device = backend.device
        self.patch_size = tuple(patch_size)
        self.tile_step = tile_step
        self.batch_size = max(1, batch_size)
        self.num_heads = num_heads
        self.to_labels = to_labels
        self.background = background
        self.skip_tile = skip_tile
        self.placements = placement_order or placements(self.device)
        self.placement = self.placements[0]
        self.nnunet_order = nnunet_order
        self.notes: list[str] = []

    def run(
        self,
        data: torch.Tensor,
        mapper: GridMapper,
        on_event: EventHandler | None = None,
        focus: FocusToken | None = None,
        provisional_labels: bool = False,
    ) -> SlidingResult:
        """Predict ``data`` (channels, z, y, x; already padded to at least one tile).

        The logits are Gaussian-averaged, in the sums' dtype (float32 unless the memory plan or a fallback chose
        float16). ``focus`` is read between batches. Raises :class:`Cancelled` between batches (and the backend
        between folds and mirrors) once the current cancel token is set; device memory is freed before it
        propagates. Out of memory while allocating the sums moves them to the next placement; in a forward pass it
        halves the batch (where the backend can run smaller batches) and retries that batch; while finalising it
        finishes in host memory. No tile ever runs twice.
        """
        started = time.perf_counter()
        try:
            logits, tiles_run, tiles_skipped = self._run(data, mapper, on_event, focus, provisional_labels)
        except Cancelled:
            free_device_memory(self.device)
            raise
        return SlidingResult(logits, tiles_run, tiles_skipped, tiles_run * self.backend.passes_per_tile,
                             self.batch_size, time.perf_counter() - started, list(self.notes))

    def run_streaming(
        self,
        data: torch.Tensor,
        mapper: GridMapper,
        on_rows: RowsHandler,
        on_event: EventHandler | None = None,
        provisional_labels: bool = False,
        on_plane: PlaneHandler | None = None,
    ) -> SlidingResult:
        """Predict ``data`` as :meth:`run` does, but in nnU-Net's tile order with the sums in a
        :class:`~.window.SlabWindow`: after each batch, the rows no remaining tile touches go to ``on_rows``, averaged
        (bit for bit what :meth:`run` in nnU-Net's order would return for them), first row to last. With
        ``on_plane``, the rows under the last row of 3D tiles go to it instead, after each of its batches, with the
        columns final so far (why: their export can then begin before the last tile, which alone touches them all).
        The result holds no logits. Cancel and out-of-memory behave as in :meth:`run`."""
        started = time.perf_counter()
        try:
            tiles_run, tiles_skipped = self._run_streaming(data, mapper, on_rows, on_event, provisional_labels,
                                                           on_plane)
        except Cancelled:
            free_device_memory(self.device)
            raise
        return SlidingResult(None, tiles_run, tiles_skipped, tiles_run * self.backend.passes_per_tile,
                             self.batch_size, time.perf_counter() - started, list(self.notes))

    def _run_streaming(self, data: torch.Tensor, mapper: GridMapper, on_rows: RowsHandler,
                       on_event: EventHandler | None, provisional_labels: bool,
                       on_plane: PlaneHandler | None) -> tuple[int, int]:
        spatial = tuple(int(s) for s in data.shape[1:])
        planned = plan_tiles(spatial, self.patch_size, self.tile_step)  # type: ignore[arg-type]
        tiles = [tile for tile in planned if self.skip_tile is None or not self.skip_tile(tile)]
        final_rows = rows_final_after(tiles, spatial[0])
        rows = window_rows(tiles, self.batch_size)
        window = self._allocate(lambda placement: SlabWindow(self.num_heads, spatial, self.patch_size, placement, rows))
        background = None
        if len(tiles) < len(planned):
            background = self.background if self.background is not None else background_logits(self.num_heads, False)
        data = data.to(self.device)
        is_2d = len(self.patch_size) == 2
        plane_from = None if on_plane is None or is_2d else tail_start(tiles, final_rows)
        total, done, started = len(tiles), 0, time.perf_counter()
        with torch.inference_mode():
            while done < total or window.first < spatial[0]:
                if cancel_requested():
                    del window, data  # the sums go now, not when the exception is done with this frame
                    raise Cancelled()
                batch = tiles[done:done + self.batch_size]
                done = self._run_batch(batch, data, window, is_2d, mapper, (done, total, started), on_event,
                                       provisional_labels)
                in_tail = plane_from is not None and done >= plane_from
                if final_rows[done] > window.first and not (in_tail and done == total):
                    for first, rows in window.release(final_rows[done], background):
                        on_rows(first, rows)
                if in_tail:
                    assert on_plane is not None
                    columns = final_columns(tiles[done:], spatial[1:])
                    on_plane(window.release_plane(columns, background), columns, 0 < total - done <= self.batch_size)
            del data
        return total, len(planned) - total

    def _allocate(self, make: Callable[[Placement], Sums]) -> Sums:
        candidates = list(self.placements)
        for index, placement in enumerate(candidates):
            try:
                accumulator = make(placement)
            except (RuntimeError, MemoryError) as error:
                if not is_out_of_memory(error) or index == len(candidates) - 1:
                    raise self._out_of_memory(error, "allocating the logit sums") from None
                free_device_memory(self.device)
                continue
            if index > 0:
                self.notes.append(f"memory ran short: logit sums kept {placement.describe()}")
            self.placement = placement
            return accumulator
        raise AssertionError("no placement")  # pragma: no cover - the loop returns or raises

    def _out_of_memory(self, error: BaseException, stage: str) -> OutOfMemoryError:
        return OutOfMemoryError(str(self.device), f"out of memory while {stage} ({str(error).splitlines()[0][:160]}); "
                                                  "try a faster preset, fewer folds, --batch-size 1 or --device cpu")

    def _run_batch(self, batch: list[Tile], data: torch.Tensor, sums: Accumulator | SlabWindow, is_2d: bool,
                   mapper: GridMapper, progress: tuple[int, int, float], on_event: EventHandler | None,
                   provisional_labels: bool) -> int:
        """One batch of tiles through the network into ``sums`` (the whole-volume accumulator or the streaming
        window), an event after each tile; ``progress`` is (tiles done before it, tiles in all, start time).
        Returns the tiles done after it."""
        done, total, started = progress
        if batch:
            inputs = torch.stack([data[(slice(None), *self._network_slice(t.box, is_2d))] for t in batch])
            predictions = self._forward(inputs)  # may shrink the batch: it then runs in pieces
            for tile, prediction in zip(batch, predictions):
                sums.add(self._network_slice(tile.box, is_2d), prediction)
        for tile in batch:
            done += 1
            if on_event is not None:
                elapsed = time.perf_counter() - started
                on_event(self._event(tile, sums, mapper, done, total, elapsed, provisional_labels))
        return done

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch; on out-of-memory the batch size halves (kept for later batches) and it runs again."""
        while True:
            try:
                if inputs.shape[0] <= self.batch_size:  # the usual case: no copy of the batch's logits
                    return self.backend(inputs)
                return self._forward_in_pieces(inputs)
            except (RuntimeError, MemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                free_device_memory(self.device)
                if self.batch_size == 1 or not self.backend.variable_batch:
                    raise self._out_of_memory(error, "running the network") from None
                self.batch_size //= 2
                self.notes.append(f"memory ran out: batch size reduced to {self.batch_size}")

    def _forward_in_pieces(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch larger than :attr:`batch_size`, run in pieces; each piece is copied out before the next
        runs, since a backend may hand out its own buffer."""
        logits: torch.Tensor | None = None
        for start in range(0, inputs.shape[0], self.batch_size):
            piece = self.backend(inputs[start:start + self.batch_size])
            if logits is None:
                logits = piece.new_empty((inputs.shape[0], *piece.shape[1:]))
            logits[start:start + piece.shape[0]] = piece
        assert logits is not None
        return logits

    def _run(
        self,
        data: torch.Tensor,
        mapper: GridMapper,
        on_event: EventHandler | None,
        focus: FocusToken | None,
        provisional_labels: bool,
    ) -> tuple[torch.Tensor, int, int]:
        spatial = tuple(int(s) for s in data.shape[1:])
        tiles = plan_tiles(spatial, self.patch_size, self.tile_step)  # type: ignore[arg-type]
        planned = len(tiles)
        if self.skip_tile is not None:
            tiles = [tile for tile in tiles if not self.skip_tile(tile)]
        queue = TileQueue(tiles)
        steering = _Steering(None if self.nnunet_order else focus, mapper)
        accumulator = self._allocate(lambda p: Accumulator(self.num_heads, spatial, self.patch_size, p))
        data = data.to(self.device)
        is_2d = len(self.patch_size) == 2
        total, done, started = len(tiles), 0, time.perf_counter()
        with torch.inference_mode():
            while len(queue):
                if cancel_requested():
                    del accumulator, data  # the sums go now, not when the exception is done with this frame
                    raise Cancelled()
                steering.apply(queue)
                batch = queue.take(self.batch_size)
                done = self._run_batch(batch, data, accumulator, is_2d, mapper, (done, total, started), on_event,
                                       provisional_labels)
            del data
            if planned > total:
                background = self.background if self.background is not None else background_logits(self.num_heads, False)
                accumulator.fill_uncovered(background)
            return self._finish(accumulator), total, planned - total

    def _finish(self, accumulator: Accumulator) -> torch.Tensor:
        """Average the sums; a device that runs out of memory here hands them to the host instead of rerunning."""
        try:
            return accumulator.finalise()
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if accumulator.placement.device.type == "cpu":
                raise self._out_of_memory(error, "averaging the logit sums") from None
        free_device_memory(self.device)
        accumulator.to_host()
        self.notes.append("device memory ran out after the last tile: the logits were averaged in host memory")
        try:
            return accumulator.finalise()
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            raise self._out_of_memory(error, "averaging the logit sums") from None

    @staticmethod
    def _network_slice(box: Box, is_2d: bool) -> tuple[int | slice, ...]:
        return (box[0].start, box[1], box[2]) if is_2d else box

    def _event(
        self,
        tile: Tile,
        accumulator: Accumulator | SlabWindow,
        mapper: GridMapper,
        done: int,
        total: int,
        elapsed: float,
        provisional_labels: bool,
    ) -> TileEvent:
        input_box = mapper.input_box(tile.box)
        labels = None
        if provisional_labels and input_box is not None:
            region = self.to_labels(accumulator.tile_logits(tile.box)).cpu().numpy()
            labels = mapper.labels_to_input(region, tile.box, input_box)
        eta = elapsed / done * (total - done)
        return TileEvent(done, total, tile.index, tile.box, input_box, labels, elapsed, eta)


class _Steering:
    """Applies a :class:`FocusToken`'s newest wish to the queue of tiles not yet run, once per wish."""

    def __init__(self, focus: FocusToken | None, mapper: GridMapper) -> None:
        self.focus = focus
        self.mapper = mapper
        self.applied = 0

    def apply(self, queue: TileQueue) -> None:
        """Reorder ``queue`` if the focus changed since the last call."""
        if self.focus is None:
            return
        version, wish = self.focus.wish()
        if version == self.applied or wish is None:
            return
        self.applied = version
        kind, value = wish
        key: Callable[[Tile], float] = self.mapper.slice_priority(*value) if kind == "slice" else value
        queue.prioritise(key)

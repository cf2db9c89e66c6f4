"""A streaming window of logit sums: a ring buffer over the network grid's slowest axis (axis 0).

Tiles run in nnU-Net's order (slowest axis outermost), so once every tile that touches a row has run, that row's
sums are final. :class:`SlabWindow` holds only the rows that unfinished tiles still touch; :meth:`SlabWindow.release`
averages the final ones and hands them out. Every voxel gets the same additions in the same order as in a
whole-volume :class:`~.accumulators.Accumulator` fed the same tiles (a tile is added row range by row range, and
addition, product and division are element-wise), so the averaged rows are the whole-volume engine's, bit for bit.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..events import Box
from ..runtime.allocator import returning_large_blocks
from .accumulators import Placement, nnunet_gaussian
from .plan import Tile, plan_tiles
from .plane_release import new_boxes


def window_rows(tiles: list[Tile], batch_size: int) -> int:
    """The rows a ring must hold to run ``tiles`` (in this order) in batches of ``batch_size`` (or smaller), releasing
    rows below every remaining tile's start after each batch: the largest span from the lowest row a remaining tile
    still touches to the highest row of the next batch."""
    starts = [tile.box[0].start for tile in tiles]
    lowest_remaining = list(starts)
    for i in range(len(starts) - 2, -1, -1):
        lowest_remaining[i] = min(starts[i], lowest_remaining[i + 1])
    span = 1
    for first in range(0, len(tiles), max(1, batch_size)):
        top = max(tile.box[0].stop for tile in tiles[first:first + batch_size])
        span = max(span, top - lowest_remaining[first])
    return span


def streaming_rows(grid: tuple[int, int, int], patch_size: tuple[int, ...], tile_step: float, batch_size: int,
                   pending: int) -> tuple[int, int]:
    """(ring rows, all rows held) of a streaming run over a padded network ``grid``: the ring
    (:func:`window_rows`), the released rows that may wait for the export (``pending`` releases, each at most one
    tile step of rows, and the last, at most the ring) and the export's halo (one step and two rows)."""
    tiles = plan_tiles(grid, patch_size, tile_step)
    ring = min(window_rows(tiles, batch_size), grid[0])
    starts = sorted({tile.box[0].start for tile in tiles})
    step = max([b - a for a, b in itertools.pairwise(starts)] or [tiles[0].box[0].stop - tiles[0].box[0].start])
    return ring, min(grid[0], 2 * ring + (pending + 1) * step + 2)


def rows_final_after(tiles: list[Tile], grid_rows: int) -> list[int]:
    """For each count ``n`` of tiles run (0..len(tiles)), the rows below which no remaining tile adds anything."""
    final = [grid_rows] * (len(tiles) + 1)
    for n in range(len(tiles) - 1, -1, -1):
        final[n] = min(final[n + 1], tiles[n].box[0].start)
    return final


class SlabWindow:
    """Gaussian-weighted sums of (heads, *tile) logits over ``rows`` rows of a (z, y, x) network grid, as a ring:
    grid row ``z`` lives in ring row ``z % rows``. Rows below :attr:`first` have been released.

    Allocating it may raise an out-of-memory error (the runner then tries the next placement).
    """

    def __init__(self, heads: int, spatial: tuple[int, ...], patch_size: tuple[int, ...], placement: Placement,
                 rows: int) -> None:
        self.placement = placement
        self.grid_rows = int(spatial[0])
        self.rows = max(1, min(int(rows), self.grid_rows))
        self.gaussian = nnunet_gaussian(patch_size, placement.dtype, placement.device)
        plane = tuple(int(s) for s in spatial[1:])
        self.logits = torch.zeros((heads, self.rows, *plane), dtype=placement.dtype, device=placement.device)
        self.weights = torch.zeros((self.rows, *plane), dtype=placement.dtype, device=placement.device)
        self.first = 0
        """The lowest grid row not yet released."""
        self._plane_done: np.ndarray | None = None
        """Per grid y row, the leading x columns of rows [first, end) already averaged by :meth:`release_plane`."""

    def _pieces(self, start: int, stop: int) -> list[tuple[slice, slice]]:
        """Grid rows [start, stop) as (ring rows, offsets from ``start``) pieces: one, or two where the ring wraps."""
        if start < self.first or stop > self.first + self.rows:
            raise ValueError(f"rows {start}-{stop} lie outside the window {self.first}-{self.first + self.rows}")
        ring = start % self.rows
        head = min(stop - start, self.rows - ring)
        pieces = [(slice(ring, ring + head), slice(0, head))]
        if head < stop - start:
            pieces.append((slice(0, stop - start - head), slice(head, stop - start)))
        return pieces

    def add(self, region: tuple[int | slice, ...], prediction: torch.Tensor) -> None:
        """Add one tile's float32 logits (heads, *tile) at ``region`` (grid coordinates; a 2d tile's row is an int),
        exactly as :meth:`~.accumulators.Accumulator.add` does (``prediction`` is weighted in place), piece by piece
        where the ring wraps."""
        prediction = prediction.to(self.placement.device)
        rows, plane = region[0], tuple(region[1:])
        if isinstance(rows, int):
            ring = rows % self.rows
            self._pieces(rows, rows + 1)  # checks the row lies in the window
            self.logits[(slice(None), ring, *plane)] += prediction.mul_(self.gaussian)
            self.weights[(ring, *plane)] += self.gaussian
            return
        for ring, part in self._pieces(int(rows.start), int(rows.stop)):
            gaussian = self.gaussian[part]
            self.logits[(slice(None), ring, *plane)] += prediction[:, part].mul_(gaussian)
            self.weights[(ring, *plane)] += gaussian

    def tile_logits(self, box: Box) -> torch.Tensor:
        """The running (unnormalised) sums of ``box`` (grid coordinates, inside the window), in float32."""
        parts = [self.logits[(slice(None), ring, *box[1:])] for ring, _ in self._pieces(box[0].start, box[0].stop)]
        return torch.cat(parts, dim=1).float()

    def release_plane(self, final_columns: np.ndarray,
                      background: torch.Tensor | None) -> list[tuple[int, torch.Tensor]]:
        """The last rows, [:attr:`first`, grid end), as views of the ring (pieces as :meth:`release` gives them), with
        the columns ``final_columns`` names (per grid y row, how many leading x columns no remaining tile touches:
        :func:`~.plane_release.final_columns`) averaged in place, as :meth:`release` averages them; the others still
        hold running sums. Once every column is final the window is spent (:attr:`first` is the grid's end), as
        after the last :meth:`release`. ``background`` and errors as for :meth:`release`."""
        plane = tuple(self.logits.shape[2:])
        done = np.zeros(plane[0], dtype=np.int64) if self._plane_done is None else self._plane_done
        final = np.maximum(np.minimum(final_columns, plane[1]), done)
        pieces = self._pieces(self.first, self.grid_rows)
        for y_start, y_stop, x_start, x_stop in new_boxes(done, final):
            for ring, _ in pieces:
                self._average_in_place(ring, slice(y_start, y_stop), slice(x_start, x_stop), background)
        self._plane_done = final
        views = [(self.first + offsets.start, self.logits[:, ring]) for ring, offsets in pieces]
        if bool((final >= plane[1]).all()):
            self.first = self.grid_rows
            self.logits, self.weights = None, None  # type: ignore[assignment]
        return views

    def _average_in_place(self, ring: slice, ys: slice, xs: slice, background: torch.Tensor | None) -> None:
        """Average one final box of the ring (no tile adds to it again) in place; raises on a non-finite value."""
        logits, weights = self.logits[:, ring, ys, xs], self.weights[ring, ys, xs]
        _fill_uncovered(logits, weights, background)
        torch.div(logits, weights, out=logits)
        if not bool(torch.isfinite(logits).all()):
            raise RuntimeError("non-finite logits after accumulation")

    def release(self, stop: int, background: torch.Tensor | None) -> list[tuple[int, torch.Tensor]]:
        """Rows [:attr:`first`, ``stop``) averaged as :meth:`~.accumulators.Accumulator.finalise` averages them, in
        the sums' dtype, as (first grid row, (heads, rows, y, x)) pieces: one, or two where the ring wraps (never
        joined: joining copies them all once more). Their ring rows are zeroed for reuse. The last release (``stop``
        is the grid's end) divides in place and hands out the ring itself, so the window is never held twice.
        ``background``: logits (weight 1) for voxels no tile covered (when tiles were skipped), as
        :meth:`~.accumulators.Accumulator.fill_uncovered` gives them. Raises RuntimeError on a non-finite value."""
        last = stop >= self.grid_rows
        pieces = []
        for ring, offsets in self._pieces(self.first, stop):
            logits, weights = self.logits[:, ring], self.weights[ring]
            _fill_uncovered(logits, weights, background)
            if last:
                averaged = torch.div(logits, weights, out=logits)  # in place: nothing allocated
            else:
                with returning_large_blocks():  # handed back to the system when the export lets go of them
                    averaged = torch.div(logits, weights)
                logits.zero_()
                weights.zero_()
            pieces.append((self.first + offsets.start, averaged))
        self.first = stop
        if last:  # the ring is spent: only the rows handed out keep its memory
            self.logits, self.weights = None, None  # type: ignore[assignment]
        for _, averaged in pieces:
            for head in averaged:  # per head: the check allocates one head's mask, not the whole window's
                if not bool(torch.isfinite(head).all()):
                    raise RuntimeError("non-finite logits after accumulation")
        return pieces


def _fill_uncovered(logits: torch.Tensor, weights: torch.Tensor, background: torch.Tensor | None) -> None:
    """Give voxels that no tile covered (weight 0, when tiles were skipped) ``background``'s logits at weight 1."""
    if background is None:
        return
    uncovered = weights == 0
    if bool(uncovered.any()):
        for head in range(logits.shape[0]):
            logits[head][uncovered] = float(background[head])
        weights[uncovered] = 1

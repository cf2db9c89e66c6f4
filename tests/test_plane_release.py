"""The last row of tiles releases its columns tile by tile (issue 27: the time after the last tile is that tile's own
part of the export): which columns are final, cut into rectangles, never one a remaining tile still touches."""
from __future__ import annotations

import numpy as np
import pytest

from tilewise.engine.sliding.plan import plan_tiles
from tilewise.engine.sliding.plane_release import final_columns, new_boxes, tail_start
from tilewise.engine.sliding.window import rows_final_after

GRID, PATCH = (150, 133, 133), (64, 64, 64)


def _last_row(tiles):
    last = tiles[-1].box[0].start
    return [tile for tile in tiles if tile.box[0].start == last]


def _touched(remaining, plane) -> np.ndarray:
    mask = np.zeros(plane, dtype=bool)
    for tile in remaining:
        mask[tile.box[1], tile.box[2]] = True
    return mask


def _final_mask(columns: np.ndarray, plane) -> np.ndarray:
    return np.arange(plane[1])[None, :] < columns[:, None]


def test_in_nnunets_order_the_final_columns_are_exactly_what_no_remaining_tile_touches() -> None:
    row = _last_row(plan_tiles(GRID, PATCH, 0.5))
    plane = GRID[1:]
    assert len(row) == 16
    before = final_columns(row, plane)
    assert not before.any(), "nothing is final before the first tile of the row"
    for done in range(1, len(row) + 1):
        columns = final_columns(row[done:], plane)
        assert np.array_equal(_final_mask(columns, plane), ~_touched(row[done:], plane)), f"after tile {done}"
        assert (columns >= before).all(), "released columns never shrink"
        before = columns
    assert (before == plane[1]).all()
    last = row[-1]
    untouched_before_last = ~_touched(row[-1:], plane)
    assert untouched_before_last.sum() == plane[0] * plane[1] - 64 * 64, "only the last tile's own columns wait"
    assert last.box[1].start == last.box[2].start == 69


@pytest.mark.parametrize("seed", range(5))
def test_with_tiles_skipped_no_column_a_remaining_tile_touches_is_called_final(seed: int) -> None:
    rng = np.random.default_rng(seed)
    row = [tile for tile in _last_row(plan_tiles(GRID, PATCH, 0.5)) if rng.random() > 0.3]
    plane = GRID[1:]
    for done in range(len(row) + 1):
        final = _final_mask(final_columns(row[done:], plane), plane)
        assert not (final & _touched(row[done:], plane)).any()


def test_new_boxes_cover_exactly_the_newly_final_region() -> None:
    rng = np.random.default_rng(3)
    plane = (40, 30)
    before = np.sort(rng.integers(0, 31, plane[0]))[::-1].copy()
    after = np.minimum(before + rng.integers(0, 12, plane[0]), plane[1])
    mask = np.zeros(plane, dtype=int)
    boxes = new_boxes(before, after)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] += 1
    expected = _final_mask(after, plane) & ~_final_mask(before, plane)
    assert np.array_equal(mask, expected.astype(int)), "each newly final voxel in exactly one box"
    assert [box[0] for box in boxes] == sorted(box[0] for box in boxes)


def test_the_tail_begins_with_the_last_row_of_tiles_once_the_rows_above_it_are_final() -> None:
    tiles = plan_tiles(GRID, PATCH, 0.5)
    start = tail_start(tiles, rows_final_after(tiles, GRID[0]))
    assert start == len(tiles) - 16
    assert tail_start([], [GRID[0]]) is None

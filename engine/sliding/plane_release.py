"""Which columns of the last row of tiles are final, tile by tile (so that their export need not wait for its last
tile).

Along the slowest axis a row of the grid is final once every tile that touches it has run; the last row of tiles
touches all the rows below its start, so a whole-row release hands them all out only after the last tile. Within that
row of tiles, nnU-Net's order runs the tiles row by row along y, then along x: once a tile has run, the columns left
of the next one (and the y rows above the next row of tiles) are final too. :func:`final_columns` gives that region
as, per y row, how many leading x columns are final: a staircase, which :func:`new_boxes` cuts into rectangles.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .plan import Tile


def final_columns(remaining: Sequence[Tile], plane: tuple[int, int]) -> np.ndarray:
    """Per grid y row (``plane``: the grid's (y, x) size), how many leading x columns no tile of ``remaining`` touches.

    The tiles of ``remaining`` all start at the same grid row (the last row of tiles). Whatever their order: the rows
    above the first remaining tile's y are final, and the rows that only its row of tiles covers are final left of
    its x; the rest is counted as not final (the count may be short where tiles were skipped, never long)."""
    widths = np.zeros(plane[0], dtype=np.int64)
    if not remaining:
        widths[:] = plane[1]
        return widths
    tops = [tile.box[1].start for tile in remaining]
    top = min(tops)
    below = [y for y in tops if y > top]
    band_end = min(below) if below else plane[0]
    left = min(tile.box[2].start for tile in remaining if tile.box[1].start == top)
    widths[:top] = plane[1]
    widths[top:band_end] = left
    return widths


def new_boxes(before: np.ndarray, after: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The region final in ``after`` and not in ``before`` (per y row, leading x columns; ``after`` >= ``before``) as
    rectangles (y start, y stop, x start, x stop), top to bottom: runs of rows with the same two counts."""
    boxes: list[tuple[int, int, int, int]] = []
    y, rows = 0, len(after)
    while y < rows:
        stop = y + 1
        while stop < rows and before[stop] == before[y] and after[stop] == after[y]:
            stop += 1
        if after[y] > before[y]:
            boxes.append((y, stop, int(before[y]), int(after[y])))
        y = stop
    return boxes


def tail_start(tiles: Sequence[Tile], final_rows: Sequence[int]) -> int | None:
    """The number of tiles run after which every remaining tile starts at one grid row and the rows below it are all
    final (the last row of tiles has begun), or None when there are no tiles."""
    if not tiles:
        return None
    last = tiles[-1].box[0].start
    start = len(tiles) - 1
    while start > 0 and tiles[start - 1].box[0].start == last:
        start -= 1
    if any(tile.box[0].start != last for tile in tiles[start:]) or final_rows[start] != last:
        return None
    return start

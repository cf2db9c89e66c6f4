"""In which order tiles run: centre-out by default, reordered at any time (the viewer puts the slice on screen first).

The order never changes the result: every tile's contribution is summed in float32.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from .plan import Tile


def centre_out(tiles: list[Tile], grid_shape: tuple[int, int, int]) -> list[Tile]:
    """Tiles sorted by the distance of their centre to the grid's centre (ties keep nnU-Net's order)."""
    centre = np.array([(s - 1) / 2 for s in grid_shape])
    return sorted(tiles, key=lambda t: (float(np.linalg.norm(np.array(t.centre) - centre)), t.index))


class TileQueue:
    """Thread-safe queue of the tiles still to run; :meth:`prioritise` may be called from any thread."""

    def __init__(self, tiles: list[Tile]) -> None:
        self._pending = list(tiles)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def take(self, count: int) -> list[Tile]:
        """Remove and return up to ``count`` tiles from the front."""
        with self._lock:
            batch, self._pending = self._pending[:count], self._pending[count:]
            return batch

    def prioritise(self, key: Callable[[Tile], float]) -> None:
        """Reorder the remaining tiles by ``key`` (smaller first; a stable sort keeps the current order on ties)."""
        with self._lock:
            self._pending.sort(key=key)

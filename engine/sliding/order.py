"""In which order tiles run: nnU-Net's own by default, reordered at any time (the viewer puts the slice on screen first).

nnU-Net's order is the default because float32 sums of the same terms in another order can differ in their last bit,
which on a voxel whose two best classes are nearly tied can change its label; in nnU-Net's order a whole-volume run
and a streaming run add every voxel's terms exactly as nnU-Net does.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from .plan import Tile


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

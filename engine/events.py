"""What a run reports and how a caller stops it: :class:`TileEvent` after every batch, :class:`CancelToken`."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]
"""A (z, y, x) region of a grid."""


@dataclass(frozen=True)
class TileEvent:
    """Reported after each tile's batch has run.

    ``done`` counts finished tiles (1-based) of ``total``. ``network_box`` is the tile in the padded network grid,
    ``input_box`` the input-grid region it covers (None if it lies in padding only) and ``labels`` the provisional
    labels of ``input_box`` (None unless requested).
    """

    done: int
    total: int
    tile_index: int
    network_box: Box
    input_box: Box | None
    labels: np.ndarray | None
    elapsed_s: float
    eta_s: float


class CancelToken:
    """Thread-safe flag a caller sets to stop a run before its next batch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the run to stop."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()


EventHandler = Callable[[TileEvent], None]

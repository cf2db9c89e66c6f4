"""What a run reports and how a caller stops it: :class:`TileEvent` after every batch, :class:`CancelToken`."""
from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import Cancelled

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


_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("tilewise_cancel", default=None)
"""The token of the run this thread is working on: stages deep inside a run (thread-pool slabs, forward passes
between mirrors, OpenVINO conversion between folds, checkpoint loading) check it without a parameter threaded
through every call."""


@contextmanager
def cancellable(token: Any) -> Iterator[None]:
    """Within the block (on this thread), :func:`check_cancelled` raises once ``token.cancelled`` is true."""
    reset = _CURRENT.set(token)
    try:
        yield
    finally:
        _CURRENT.reset(reset)


def current_cancel_token() -> Any:
    """The token of the innermost :func:`cancellable` block on this thread, or None."""
    return _CURRENT.get()


def check_cancelled() -> None:
    """Raise :class:`~tilewise.engine.Cancelled` if the current run was cancelled."""
    token = _CURRENT.get()
    if token is not None and token.cancelled:
        raise Cancelled()


def counted_events(on_event: EventHandler | None, before: int, total: int) -> EventHandler | None:
    """Tile events of one stage of a longer run, counted over the whole run: ``before`` tiles came earlier and
    ``total`` is every stage's (a cascade's two stages share one progress bar)."""
    if on_event is None:
        return None

    def forward(event: TileEvent) -> None:
        done = before + event.done
        rate = event.elapsed_s / max(event.done, 1)
        on_event(replace(event, done=done, total=total, eta_s=rate * (total - done)))

    return forward

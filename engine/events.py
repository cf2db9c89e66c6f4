"""What a run reports and how a caller steers it: :class:`TileEvent` after every batch, :class:`CancelToken` to stop
it, :class:`FocusToken` to run the tiles where the person looks first; :class:`LoadEvent` for each fold while a
model loads (through a :class:`LoadReporter`).

Loading reads each fold's checkpoint (step 'loading'), then, for OpenVINO, gets each fold ready for its device
('preparing'): from its cache ('cached') or by converting it ('converting', then 'converted' with the seconds it
took). Events come on the loading thread, in fold order; a handler must return quickly (the viewer sends them on as
Qt signals).

One way to cancel: the public entry points (:class:`~tilewise.engine.Predictor`'s methods) take a token and make it
the current one (:func:`cancellable`); everything below them checks the current token (:func:`check_cancelled`),
never a parameter.
"""
from __future__ import annotations

import contextvars
import threading
import time
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


LOADING = "loading"
"""A fold's checkpoint is being read."""
PREPARING = "preparing"
"""OpenVINO gets a fold ready for its device: from the cache when it holds it, else a conversion follows."""
CACHED = "cached"
"""The fold came from OpenVINO's cache (checked against torch): it is ready."""
CONVERTING = "converting"
"""The fold is being converted for OpenVINO (first use at this precision, or a cached copy that had to be rebuilt)."""
CONVERTED = "converted"
"""The fold's conversion is done (checked against torch, cached): ``fold_seconds`` is what it took."""


@dataclass(frozen=True)
class LoadEvent:
    """One step of loading a model: fold ``fold`` (1-based) of ``folds`` is at ``step``.

    ``seconds_so_far`` counts from the start of loading. ``fold_seconds`` is what a finished step took (the
    conversion, for 'converted'; else 0). ``reason`` says why a fold converts: '' on first use of the model at this
    precision, else why its cached copy could not be used. ``device`` is where OpenVINO runs ('CPU', 'GPU', ...;
    '' for torch), ``precision`` what the model computes in.
    """

    fold: int
    folds: int
    step: str
    seconds_so_far: float
    fold_seconds: float = 0.0
    reason: str = ""
    device: str = ""
    precision: str = ""


LoadHandler = Callable[[LoadEvent], None]


class LoadReporter:
    """Sends :class:`LoadEvent` s to ``handler`` (None: to nobody), timed from this reporter's creation."""

    def __init__(self, handler: LoadHandler | None = None) -> None:
        self.handler = handler
        self.started = time.perf_counter()

    def report(self, fold: int, folds: int, step: str, fold_seconds: float = 0.0, reason: str = "",
               device: str = "", precision: str = "") -> None:
        """Tell the handler that fold ``fold`` (1-based) of ``folds`` is at ``step``."""
        if self.handler is not None:
            self.handler(LoadEvent(fold, folds, step, time.perf_counter() - self.started, fold_seconds, reason,
                                   device, precision))


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


class FocusToken:
    """Where the person looks, set from any thread before or during a run: the sliding window runs the remaining
    tiles nearest to it first. The latest wish wins; the order of the tiles never changes the labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._wish: tuple[str, Any] | None = None

    def focus_on_slice(self, input_axis: int, index: int) -> None:
        """The tiles that show slice ``index`` of input axis ``input_axis`` (0 = z, 1 = y, 2 = x) first."""
        self._set(("slice", (input_axis, index)))

    def prioritise(self, key: Callable[[Any], float]) -> None:
        """The remaining tiles in the order of ``key`` (a tile -> a number, smaller first)."""
        self._set(("key", key))

    def wish(self) -> tuple[int, tuple[str, Any] | None]:
        """(version, wish): the version grows with every new wish, so a reader applies each one once."""
        with self._lock:
            return self._version, self._wish

    def _set(self, wish: tuple[str, Any]) -> None:
        with self._lock:
            self._version += 1
            self._wish = wish


_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("tilewise_cancel", default=None)
"""The token of the run this thread is working on: stages deep inside a run (thread-pool slabs, forward passes
between mirrors, OpenVINO conversion between folds, checkpoint loading) check it without a parameter threaded
through every call."""


@contextmanager
def cancellable(token: Any) -> Iterator[None]:
    """Within the block (on this thread), :func:`check_cancelled` raises once ``token.cancelled`` is true; a None
    ``token`` keeps the surrounding block's (a public method called inside another's run keeps its token)."""
    if token is None:
        yield
        return
    reset = _CURRENT.set(token)
    try:
        yield
    finally:
        _CURRENT.reset(reset)


def current_cancel_token() -> Any:
    """The token of the innermost :func:`cancellable` block on this thread, or None."""
    return _CURRENT.get()


def cancel_requested() -> bool:
    """True once the current run's token was cancelled (for a stage that frees memory before it raises)."""
    token = _CURRENT.get()
    return token is not None and token.cancelled


def check_cancelled() -> None:
    """Raise :class:`~tilewise.engine.Cancelled` if the current run was cancelled."""
    if cancel_requested():
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

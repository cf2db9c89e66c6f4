"""Splitting array work into slabs and running it on a thread pool (numpy and scipy release the GIL), cancellable
between slabs."""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import Cancelled
from ..events import current_cancel_token

SLABS_PER_THREAD = 4
"""Slabs per worker thread: enough that a cancel lands within a small part of a stage, few enough to stay cheap."""

def slabs(length: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into at most ``parts`` contiguous, non-empty (start, stop) pieces."""
    parts = max(1, min(parts, length))
    edges = np.linspace(0, length, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_all(pool: ThreadPoolExecutor, jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` on ``pool``, wait for all of them and re-raise the first error.

    Inside a :func:`~tilewise.engine.events.cancellable` block, jobs that have not started when the token is cancelled do not run, and
    :class:`Cancelled` is raised once the running ones are done.
    """
    token = current_cancel_token()

    def guarded(job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if token is not None and token.cancelled:
                raise Cancelled()
            job()
        return run

    futures = [pool.submit(guarded(job)) for job in jobs]
    error: BaseException | None = None
    for future in futures:
        try:
            future.result()
        except BaseException as raised:  # noqa: BLE001 - the first one is re-raised after all have ended
            error = error or raised
    if error is not None:
        raise error


POLL_S = 0.1
"""How often a cancellable wait looks at the cancel token."""


def run_abandonable(function: Callable[[], Any]) -> Any:
    """``function()``'s result; inside a :func:`~tilewise.engine.events.cancellable` block it runs on a helper
    thread so that a cancel returns within :data:`POLL_S` although the call itself cannot be interrupted (an
    OpenVINO conversion takes seconds). A cancelled call is abandoned: it finishes on its own and its result is
    dropped."""
    token = current_cancel_token()
    if token is None:
        return function()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=work, name="tilewise-abandonable", daemon=True).start()
    while not done.wait(POLL_S):
        if token.cancelled:
            raise Cancelled()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]

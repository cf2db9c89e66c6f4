"""SIGTERM (what a scheduler, ``kill`` or ``docker stop`` sends) handled as Ctrl-C is: the run stops at its next
check, the file being written is finished or dropped, and the process exits with 143 (128 + 15) instead of 130."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_TERMINATED = 128 + 15
"""The exit status of a run stopped by SIGTERM, as a shell reports a process that SIGTERM ended."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives: every ``except KeyboardInterrupt`` handles it as Ctrl-C."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM raises :class:`Terminated` in the main thread; later ones are ignored, so
    that the run can finish the file it is writing. Does nothing outside the main thread (Python handles signals
    only there) or where there is no SIGTERM; the previous handler comes back after the block."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    raised = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Keeping libraries quiet without racing other threads.

nnunetv2 prints hints on ``sys.stdout`` and ITK's C++ code writes to file descriptor 2. Both are process-wide, so
swapping them from two threads at once (the viewer reads an image while a run preprocesses) can leave one of them
swapped for good. Every redirection in the engine goes through :func:`silenced_stdout` or :func:`silenced_fd2`,
which hold one process-wide lock while they are swapped; output meant for the user that another thread could be
silencing meanwhile (batch's progress while a reader thread reads the next case) goes through :func:`unsilenced`.
"""
from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

_REDIRECTION = threading.RLock()


@contextmanager
def silenced_stdout() -> Iterator[None]:
    """``sys.stdout`` into a buffer for the duration, one thread at a time."""
    with _REDIRECTION, redirect_stdout(io.StringIO()):
        yield


@contextmanager
def silenced_fd2() -> Iterator[None]:
    """File descriptor 2 into a temporary file for the duration (C++ libraries write there), one thread at a time."""
    with _REDIRECTION:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)


@contextmanager
def unsilenced() -> Iterator[None]:
    """Hold off every silencing for the duration: what is written to stdout or stderr inside reaches the user
    (a line printed while another thread had fd 2 swapped would go to that thread's temporary file)."""
    with _REDIRECTION:
        yield

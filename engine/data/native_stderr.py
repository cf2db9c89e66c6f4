"""Native libraries' messages during a write: held back, and shown only when the write succeeded.

ITK's NIfTI and MetaImage libraries print a failed write's details straight to the process's stderr (file
descriptor 2), e.g. ``** ERROR: NWAD: wrote only 1048224 of 2400000 bytes to file``, and for NIfTI return as if all
went well. Tilewise finds such a write by checking the file (:mod:`.write_checks`) and says so in one plain line;
the native lines would only be noise around it. While a write runs, descriptor 2 goes to a temporary file; when the
last of the writes running at the same time ends, it is restored and what was held back is written out, unless one
of those writes failed (the lines then belong to that failure). Python's own stderr output in that window is
delayed, and dropped only together with a failed write's lines.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from ..runtime.quiet import _REDIRECTION

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_held: IO[bytes] | None = None
_failed = False


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass  # no stderr (a windowed application) or a closed one


def _start() -> None:
    """Point descriptor 2 at a temporary file (first concurrent write only); nothing happens where that fails."""
    global _depth, _saved_fd, _held
    with _lock:
        _depth += 1
        if _depth > 1:
            return
        try:
            held = tempfile.TemporaryFile()  # noqa: SIM115 - it outlives this call: closed by _finish
            saved = os.dup(2)
        except OSError:
            return  # no descriptor 2 (a windowed application) or no temporary space: write without holding back
        _flush_python_stderr()
        os.dup2(held.fileno(), 2)
        _saved_fd, _held = saved, held


def _finish(failed: bool) -> None:
    """Restore descriptor 2 after the last concurrent write; write out what was held unless a write failed."""
    global _depth, _saved_fd, _held, _failed
    with _lock:
        _failed = _failed or failed
        _depth -= 1
        if _depth > 0 or _saved_fd is None or _held is None:
            if _depth == 0:
                _failed = False
            return
        _flush_python_stderr()
        os.dup2(_saved_fd, 2)
        os.close(_saved_fd)
        held, drop = _held, _failed
        _saved_fd, _held, _failed = None, None, False
    with held:
        held.seek(0)
        text = held.read()
    if text and not drop:
        try:
            os.write(2, text)
        except OSError:
            pass


@contextmanager
def holding_native_stderr() -> Iterator[None]:
    """Hold back what native code prints to stderr inside the block; show it afterwards only if the block did not
    raise (see the module's docstring).

    Descriptor 2 is one per process: the block holds the process's one redirection lock
    (:data:`..runtime.quiet._REDIRECTION`), so a read silencing it on another thread cannot interleave and leave
    stderr pointing at the other's temporary file."""
    with _REDIRECTION:
        _start()
        failed = True
        try:
            yield
            failed = False
        finally:
            _finish(failed)

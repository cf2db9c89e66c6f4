"""Host-memory allocator tuning for CPU inference.

A 3D U-Net allocates and frees activations of tens of megabytes in every forward pass. glibc serves blocks that
large with fresh ``mmap`` calls and returns them to the kernel on ``free``, so every pass page-faults its working set
in again: on our 2-core machines that is a third of the forward time, spent in the kernel. Asking glibc to serve
them from its heap and keep freed memory (``mallopt``) removes that cost. The process then keeps its peak heap until
it exits, as torch's CUDA caching allocator does on the GPU.

Only the command line applies it (``tilewise predict`` and ``--self-test``: processes that do nothing but
inference). A viewer or any host application that imports the engine keeps its allocator as it is. Loading a model,
reading an image and preprocessing it run inside :func:`returning_large_blocks`: their large copies are made once,
and kept in the heap they would raise the process's peak (1.57 GB to 4.60 GB on a 512 x 512 x 1,500 CT).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1
_GLIBC_MMAP_MAX = 65536  # glibc's default count of mmap'ed blocks
_DISABLE_VARIABLE = "TILEWISE_KEEP_HOST_MEMORY"

_applied = False
_libc: list[ctypes.CDLL] = []
"""The C library whose allocator was tuned (empty until it is)."""
_returning = 0
"""How many :func:`returning_large_blocks` blocks are open (threads of a batch may overlap)."""
_returning_lock = threading.Lock()


def keep_freed_host_memory() -> bool:
    """Make glibc keep large freed blocks for reuse. Returns True if the tuning is active.

    Does nothing on other C libraries or platforms, or when ``TILEWISE_KEEP_HOST_MEMORY=0`` is set.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get(_DISABLE_VARIABLE, "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    if _applied:
        _libc.append(libc)
    return _applied


def return_freed_host_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``) where :func:`keep_freed_host_memory`
    keeps them: called between stages, once a case's image and preprocessing buffers are let go, so that the tiles
    do not start from the preprocessing's high-water mark (1.57 GB of float32 input on a 512 x 512 x 1,500 CT).
    Does nothing otherwise."""
    if _libc:
        _libc[0].malloc_trim(0)


@contextlib.contextmanager
def returning_large_blocks() -> Iterator[None]:
    """Within the block (on any thread, until the last open one ends), glibc serves large blocks with ``mmap`` again
    and returns them on ``free``, where :func:`keep_freed_host_memory` stopped it: for loading a model, reading an
    image and preprocessing it, which make their large copies once. Does nothing otherwise."""
    global _returning
    if not _libc:
        yield
        return
    with _returning_lock:
        _returning += 1
        if _returning == 1:
            _libc[0].mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
    try:
        yield
    finally:
        with _returning_lock:
            _returning -= 1
            if _returning == 0:
                _libc[0].mallopt(_M_MMAP_MAX, 0)


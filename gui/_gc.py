"""Keep Python's full garbage collections out of a run.

A full (generation 2) collection walks every tracked object. With napari, Qt, torch and nnU-Net loaded that is
about 700 000 objects and half a second on a slow CPU, and it holds the GIL, so the window freezes whichever thread
triggers it: the engine calls ``gc.collect()`` after each case and napari after each removed layer. While a run
goes on, the objects that existed before it are frozen (``gc.freeze()``, constant time): collections then scan
only what the run itself creates. When the last run ends they are unfrozen and Python collects them as usual, so
nothing is kept for longer than one run.
"""
from __future__ import annotations

import gc
import threading
from collections.abc import Callable

_depth = 0
_lock = threading.Lock()  # a run's worker thread may end the pause while the GUI thread starts another


def pause_full_collections() -> Callable[[], None]:
    """Freeze the objects that exist now (after a cheap collection of the young ones). Pauses nest; the returned
    function ends this one pause (calling it again does nothing), from any thread."""
    global _depth
    with _lock:
        if _depth == 0:
            gc.collect(1)  # young garbage first, so that little garbage is frozen with the rest
            gc.freeze()
        _depth += 1
    ended = threading.Event()

    def resume() -> None:
        global _depth
        with _lock:
            if ended.is_set() or _depth == 0:
                return
            ended.set()
            _depth -= 1
            if _depth == 0:
                gc.unfreeze()

    return resume


def paused() -> bool:
    """True while a run keeps full collections paused."""
    return _depth > 0

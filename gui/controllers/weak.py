"""Qt and napari connections that never keep a closed window alive: calls held weakly, napari events that
disconnect themselves once Qt has deleted their receiver."""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer


def call_soon(method: Callable[..., Any], *args: Any) -> None:
    """Call bound ``method(*args)`` once the GUI thread is back in its event loop, unless its object is gone by then
    (held weakly: a pending call never keeps a closed viewer alive)."""
    reference = weakref.WeakMethod(method)

    def call() -> None:
        bound = reference()
        if bound is not None:
            bound(*args)

    QTimer.singleShot(0, call)


def alive(qobject: QObject) -> bool:
    """False once Qt has deleted ``qobject`` (its widget or window was closed) while the Python object lingers."""
    try:
        qobject.objectName()
    except RuntimeError:
        return False
    return True


def connect_weakly(emitter: Any, callback: Callable[..., Any]) -> Callable[..., Any]:
    """Connect a napari event to bound method ``callback``, held weakly; napari's events outlive Qt objects (the
    widget or the window was closed, the viewer stays), so the connection ends itself then. Returns what napari
    calls, for a later ``emitter.disconnect``."""
    method = weakref.WeakMethod(callback)

    def call(*args: Any) -> None:
        bound = method()
        if bound is not None and alive(bound.__self__):
            bound(*args)
        else:
            emitter.disconnect(call)

    emitter.connect(call)
    return call

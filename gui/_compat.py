"""The one place that touches napari's private attributes (they change between napari versions).

Each helper degrades to doing nothing (or None) when this napari has no such attribute, so the viewer still works,
only without that nicety.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def busy_indicator(viewer: Any) -> Any:
    """napari's animated 'in progress' label in the status bar of ``viewer`` (None if this napari has none)."""
    try:
        return viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator
    except (AttributeError, RuntimeError):  # napari-internal: another version, or no window
        return None


def show_maximized(viewer: Any) -> None:
    """Show the viewer's main window maximised."""
    viewer.window._qt_window.showMaximized()


def register_task(viewer: Any, description: str, cancel: Callable[[], Any]) -> Any:
    """Tell napari a task is going on, so closing the window asks first and then calls ``cancel``; returns the
    task's id for :func:`end_task` (None when this napari cannot be told)."""
    register = getattr(getattr(viewer, "window", None), "_register_task_status", None)
    if register is None:
        return None
    try:
        from napari.utils.task_status import Status

        return register("tilewise", Status.BUSY, description, cancel_callback=cancel)
    except Exception:  # noqa: BLE001 - napari-internal API; without it the aboutToQuit hook still cancels
        return None


def end_task(viewer: Any, task_id: Any, outcome: str) -> None:
    """Tell napari the task ``task_id`` has ended: "done", "cancelled", anything else is a failure."""
    update = getattr(getattr(viewer, "window", None), "_update_task_status", None)
    if update is None or task_id is None:
        return
    try:
        from napari.utils.task_status import Status

        status = {"done": Status.COMPLETED, "cancelled": Status.CANCELLED}.get(outcome, Status.FAILED)
        update(task_id, status, "")
    except Exception:  # noqa: BLE001
        pass

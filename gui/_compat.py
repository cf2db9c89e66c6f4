"""The one place that touches napari's (and npe2's) private attributes (they change between versions).

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


def canvas_overlays(viewer: Any) -> Any:
    """The mapping of ``viewer``'s canvas overlays (name -> overlay), where overlays can be added; None if this
    napari has none. napari 0.9 has the public ``viewer.canvas.overlays``; earlier versions a private dict."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is None:
        overlays = getattr(viewer, "_overlays", None)  # napari < 0.9
    return overlays


def napari_object(obj: Any) -> Any:
    """The napari object behind a plugin's ``PublicOnlyProxy`` (``obj`` itself otherwise): the extra canvases of
    :mod:`.views` connect to its layers, dims and mouse callbacks as napari's own canvas does."""
    return getattr(obj, "__wrapped__", obj)


def main_canvas(viewer: Any) -> Any:
    """The ``QtViewer`` (canvas and sliders) in the window of ``viewer``; None without a window."""
    window = getattr(napari_object(viewer), "window", None)
    return getattr(window, "_qt_viewer", None)


def scene_node(qt_viewer: Any) -> Any:
    """The vispy node of ``qt_viewer``'s canvas whose coordinates are world coordinates of the two axes on screen
    (x: the horizontal one, y: the vertical one), where napari puts its layers' visuals; None if this napari has
    none."""
    view = getattr(getattr(qt_viewer, "canvas", None), "view", None)
    return getattr(view, "scene", None)


def history_changes(entry: Any) -> list[tuple[Any, Any]] | None:
    """What one entry of a Labels layer's undo history changed: per part, (values before, value or values after) of
    just the voxels it changed. None when this napari's history has a form not known here (count afresh then).

    napari 0.9 stores a brush, fill or polygon as ``_MaskedPaintAtom(slice_key, mask, old_values, new_value)`` (with
    ``mask`` None every voxel of the box changed, and ``old_values`` is the whole box), and ``data_setitem`` as the
    tuple ``(indices, old_values, new_values)``.
    """
    changes: list[tuple[Any, Any]] = []
    try:
        for atom in entry:
            if hasattr(atom, "old_values") and hasattr(atom, "new_value"):
                changes.append((atom.old_values, atom.new_value))
            else:
                _indices, before, after = atom
                changes.append((before, after))
    except (TypeError, ValueError):
        return None
    return changes


def on_undo_redo(layer: Any, callback: Callable[[Any, Any, bool], None]) -> bool:
    """Call ``callback(layer, entry, undone)`` after napari's undo (``undone`` True) or redo of Labels ``layer`` has
    replayed history entry ``entry``: napari emits no event for either (Ctrl+Z calls ``layer.undo()``). A bound method
    is held weakly, so the layer does not keep its owner alive. False when this napari keeps no such history."""
    if not (hasattr(layer, "_undo_history") and hasattr(layer, "_redo_history")):
        return False
    import weakref

    target = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
    for name, history, undone in (("undo", "_undo_history", True), ("redo", "_redo_history", False)):
        replay = getattr(type(layer), name)

        def replay_then_tell(replay: Callable[[Any], None] = replay, history: str = history,
                             undone: bool = undone) -> None:
            entries = getattr(layer, history)
            entry = entries[-1] if entries else None
            replay(layer)
            told = target()
            if entry is not None and told is not None:
                told(layer, entry, undone)

        setattr(layer, name, replay_then_tell)  # Ctrl+Z and Ctrl+Shift+Z look the method up on the layer
    return True


def guard_window_close(viewer: Any, may_close: Callable[[], bool]) -> Any:
    """Ask ``may_close()`` whenever the person closes the window of ``viewer`` (title bar, File > Close Window,
    Exit): the close goes ahead only when it returns True. A close made by code after napari has already taken the
    window apart (``viewer.close()``) is never stopped. A bound method is held weakly (the window does not keep its
    owner alive; once the owner is gone, closes go ahead). Returns the event filter, which works while the caller
    keeps it; None without a window.

    File > Close Window and Exit call napari's ``close(confirm_need=True)``, which shows napari's own "Close
    window?" question before any close event: that call asks ``may_close()`` first, and only when it returns True
    does napari ask its own question (no unsaved edits: napari's behaviour is kept). When it returns False, the
    caller closes the window later with :func:`close_window`, which then quits the application too if Exit asked.
    """
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is None:
        return None
    import weakref

    from qtpy.QtCore import QEvent, QObject

    target = weakref.WeakMethod(may_close) if hasattr(may_close, "__self__") else (lambda: may_close)

    class _CloseFilter(QObject):  # holds nothing of the window's: napari's leak checks find no extra reference
        quit_app = False
        """True when the close that was held back was Exit: :func:`close_window` then quits as Exit does."""

        def eventFilter(self, watched: Any, event: Any) -> bool:  # Qt override
            if event.type() != QEvent.Close:
                return False
            canvas, asked = getattr(watched, "_qt_viewer", None), target()
            if asked is None or canvas is None or canvas.isHidden() or not watched.isVisible() or asked():
                return False
            self.quit_app = False  # the title bar's close: the window only
            event.ignore()
            return True

    close_filter = _CloseFilter()  # no parent: it lives as long as the caller keeps it, and Qt drops it after
    window.installEventFilter(close_filter)
    window = getattr(window, "__wrapped__", window)  # a plugin's viewer is napari's PublicOnlyProxy
    napari_close = type(window).close
    held = weakref.ref(window)
    held_filter = weakref.ref(close_filter)

    def close(quit_app: bool = False, confirm_need: bool = False) -> Any:
        """napari's ``close``, asking ``may_close()`` before napari's own question (File > Close Window, Exit)."""
        shown, asked, guard = held(), target(), held_filter()
        if shown is None:
            return None
        if confirm_need and asked is not None and guard is not None and shown.isVisible() and not asked():
            guard.quit_app = quit_app
            return None
        return napari_close(shown, quit_app=quit_app, confirm_need=confirm_need)

    window.close = close  # napari's menu actions look ``close`` up on the window
    return close_filter


def close_window(viewer: Any, close_filter: Any = None) -> None:
    """Close the window of ``viewer`` as napari's own close does, without napari asking again; quits the application
    as well when the close that ``close_filter`` (from :func:`guard_window_close`) held back was Exit."""
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is not None:
        window.close(quit_app=bool(getattr(close_filter, "quit_app", False)))


def window_is_open(viewer: Any) -> bool:
    """True while the window of ``viewer`` is shown and not being taken apart (``viewer.close()`` removes every
    layer first, then the window: such removals are no one's choice to ask about)."""
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    canvas = getattr(window, "_qt_viewer", None)
    try:
        return window is not None and canvas is not None and window.isVisible() and not canvas.isHidden()
    except RuntimeError:  # the Qt window is already deleted
        return False


def reorder_writers(command: str, first: bool, manager: Any = None) -> bool:
    """Put npe2's writer ``command`` first (``first``) or last among the writers napari offers; False when this
    npe2 has no index of writers to reorder (npe2 has no public writer priority: it reorders a private list)."""
    if manager is None:
        from npe2 import PluginManager

        manager = PluginManager.instance()
    writers = getattr(getattr(manager, "_contrib", None), "_writers", None)
    if not isinstance(writers, list):
        return False
    ours = [entry for entry in writers if getattr(entry[-1], "command", "") == command]
    others = [entry for entry in writers if getattr(entry[-1], "command", "") != command]
    writers[:] = ours + others if first else others + ours
    return True

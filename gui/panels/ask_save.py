"""Asking before unsaved edits are lost: when the window closes, a result is removed, or the image it belongs to.

One question, Save / Discard / Cancel. Save writes each edited result (asking for a file name, as Save does) and
then does what was asked (the window closes, the layer goes); if a save is cancelled or fails, nothing more happens.
Discard loses the edits; Cancel leaves everything as it was (a removed layer is put back where it was).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import QObject
from qtpy.QtWidgets import QMessageBox, QWidget

from .. import _compat
from ..controllers.results import ResultsController
from ..controllers.weak import call_soon

SAVE, DISCARD, CANCEL = "save", "discard", "cancel"


def ask_save_edits(parent: QWidget | None, names: list[str], before: str) -> str:
    """Ask whether to save the unsaved edits of the results ``names`` before ``before`` ('closing the window'):
    :data:`SAVE`, :data:`DISCARD` or :data:`CANCEL`."""
    listed = ", ".join(f"'{name}'" for name in names)
    verb = "has" if len(names) == 1 else "have"
    answer = QMessageBox.warning(parent, "Unsaved edits", f"{listed} {verb} edits that are not saved. Save them "
                                 f"before {before}?", QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel,
                                 QMessageBox.Save)
    return {QMessageBox.Save: SAVE, QMessageBox.Discard: DISCARD}.get(answer, CANCEL)


class UnsavedEditsGuard(QObject):
    """Stands between the person and lost edits: the window's close, and removing results or their images.

    ``save(layer)`` starts saving one result (True when started: the person chose a file); ``saved`` is the widget's
    signal with the file written ('' when saving failed), emitted after the results controller has heard of it;
    ``before_close()`` ends the widget's threads before this guard closes the window itself (Qt then deletes it).
    """

    def __init__(self, parent: QWidget, viewer: Any, results: ResultsController, save: Callable[[Any], bool],
                 saved: Any, before_close: Callable[[], None]) -> None:
        super().__init__(parent)
        self._parent = parent
        self.viewer = viewer
        self.results = results
        self._save = save
        self._before_close = before_close
        self._queue: list[Any] = []  # results still to save before ``_then``
        self._then: Callable[[], None] | None = None
        self._close_filter = _compat.guard_window_close(viewer, self._may_close)
        results.removal_needs_answer.connect(self._on_removal)
        saved.connect(self._on_saved)

    # ---- the window -----------------------------------------------------------------------------
    def _may_close(self) -> bool:
        """The person closes the window: True lets it close; otherwise it closes later, once the edits are saved or
        discarded (closed by code, so napari does not ask a second time)."""
        edited = self.results.unsaved()
        if not edited:
            return True
        if self._queue:  # the edits are being saved, the window closes afterwards
            return False
        answer = ask_save_edits(self._parent, [layer.name for layer in edited], "closing the window")
        if answer == DISCARD:
            self.results.discard_edits(edited)
            call_soon(self._close)
        elif answer == SAVE:
            self._save_then(edited, self._close)
        return False

    def _close(self) -> None:
        self._before_close()
        _compat.close_window(self.viewer, self._close_filter)

    # ---- removing layers ------------------------------------------------------------------------
    def _on_removal(self, layer: Any, index: int, edited: list[Any]) -> None:
        """``layer`` was removed and would take the unsaved edits of ``edited`` with it: ask once napari is done."""
        call_soon(self._ask_removal, layer, index, edited)

    def _ask_removal(self, layer: Any, index: int, edited: list[Any]) -> None:
        if not _compat.window_is_open(self.viewer):  # the viewer was closed by code, every layer removed with it
            return
        answer = ask_save_edits(self._parent, [result.name for result in edited], f"closing '{layer.name}'")
        if answer == DISCARD:
            self.results.complete_removal(layer)
            return
        self.results.put_back(layer, index)
        if answer == SAVE:
            self._save_then(edited, partial(self._remove, layer))

    def _remove(self, layer: Any) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)  # saved now: it goes without a question

    # ---- saving, then going on ------------------------------------------------------------------
    def _save_then(self, results: list[Any], then: Callable[[], None]) -> None:
        self._queue, self._then = list(results), then
        self._save_next()

    def _save_next(self) -> None:
        if not self._queue:
            then, self._then = self._then, None
            if then is not None:
                then()
            return
        if not self._save(self._queue[0]):  # the person cancelled the file dialog: stop here
            self._queue, self._then = [], None

    def _on_saved(self, path: str) -> None:
        if not self._queue:
            return
        self._queue.pop(0)
        if not path:  # the save failed (its dialog said why): stop here
            self._queue, self._then = [], None
            return
        self._save_next()

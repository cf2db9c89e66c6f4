"""Drive a modal dialog from a test: the click that opens it returns only when it closes, so the test's action is
queued on the event loop beforehand and runs as soon as the dialog shows."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QDialog

DialogT = TypeVar("DialogT", bound=QDialog)
POLL_MS = 20
# How long to wait for the dialog to show. Generous: on a loaded machine a file dialog can take many seconds to
# appear, and a poll that gave up before it showed would leave the modal dialog (and the test) waiting for ever.
SHOW_DEADLINE_S = 300.0


def when_shown(kind: type[DialogT], act: Callable[[DialogT], None]) -> list[DialogT]:
    """Run ``act`` on the first visible modal dialog of ``kind``; a dialog that ``act`` leaves open is cancelled,
    so the test fails instead of waiting. Returns a list that then holds the dialog."""
    seen: list[DialogT] = []
    deadline = time.monotonic() + SHOW_DEADLINE_S

    def poll() -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, kind) and dialog.isVisible():
            seen.append(dialog)
            act(dialog)
            if dialog.isVisible():
                dialog.reject()
        elif time.monotonic() < deadline:
            QTimer.singleShot(POLL_MS, poll)

    QTimer.singleShot(0, poll)
    return seen

"""Problems told to the person at the screen, in one dialog each, and remembered for scripts and tests."""
from __future__ import annotations

from qtpy.QtWidgets import QWidget

from ..panels.dialogs import show_error


class Reporter:
    """Shows a problem in a modal dialog over ``parent`` and keeps its message as ``last_error``."""

    def __init__(self, parent: QWidget) -> None:
        self._parent = parent
        self.last_error: str | None = None

    def report(self, title: str, message: str) -> None:
        """Show ``message`` under ``title`` and remember it."""
        self.last_error = message
        show_error(self._parent, title, message)

    def remember(self, message: str) -> None:
        """Remember a problem that another dialog tells (the question whether to trust a model)."""
        self.last_error = message

    def clear(self) -> None:
        """Forget the last problem (a new run starts)."""
        self.last_error = None

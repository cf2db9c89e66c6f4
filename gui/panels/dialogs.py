"""Messages for the person at the screen: dialogs in plain words, never a traceback."""
from __future__ import annotations

from qtpy.QtWidgets import QMessageBox, QWidget


def show_error(parent: QWidget | None, title: str, message: str) -> None:
    """A modal error dialog."""
    QMessageBox.critical(parent, title, message)


def ask_yes_no(parent: QWidget | None, title: str, message: str) -> bool:
    """A modal question; True when the answer is Yes."""
    answer = QMessageBox.question(parent, title, message, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes

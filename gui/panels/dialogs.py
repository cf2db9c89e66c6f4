"""Dialogs for the person at the screen: messages in plain words (never a traceback), and file choices."""
from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

IMAGE_FILTER = "Medical images (*.nii.gz *.nii *.nrrd *.mha *.mhd);;All files (*)"
LABELS_FILTER = "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha *.mhd)"


def show_error(parent: QWidget | None, title: str, message: str) -> None:
    """A modal error dialog."""
    QMessageBox.critical(parent, title, message)


def ask_yes_no(parent: QWidget | None, title: str, message: str) -> bool:
    """A modal question; True when the answer is Yes."""
    answer = QMessageBox.question(parent, title, message, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def ask_to_trust(parent: QWidget | None, message: str) -> bool:
    """Ask whether to trust a model whose checkpoint needs full unpickling (``message``: the engine's); True: Yes."""
    question = (f"{message}\n\nThis model's checkpoint holds Python objects besides plain weights. Loading "
                "it can run code stored in the file. Trust this model folder only if you know where it came "
                "from.\n\nTrust it and run again?")
    return ask_yes_no(parent, "Trust this model?", question)


def ask_image_path(parent: QWidget | None, folder: str) -> str:
    """An image file to open, chosen in a dialog that starts in ``folder``; '' when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "Open an image", folder, IMAGE_FILTER)
    return path


def ask_save_path(parent: QWidget | None, suggested: Path) -> str:
    """A file to save a segmentation to, chosen in a dialog that starts at ``suggested``; '' when cancelled."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save segmentation", str(suggested), LABELS_FILTER)
    return path

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


def ask_to_trust(parent: QWidget | None, model_dir: Path, files: list[Path], message: str) -> bool:
    """Ask whether to trust the model in ``model_dir``: ``files`` (plans.json and the checkpoints) are what trust
    covers, ``message`` (the engine's) why it is needed. True when the answer is Yes."""
    listed = "\n".join(f"  {_relative(path, model_dir)} ({_size(path)})" for path in files)
    question = (f"{message}\n\nThis model needs your trust: Tilewise would fully unpickle its checkpoints and import "
                f"the Python classes its plans.json names, and either can run code stored in these files.\n\n"
                f"Folder: {model_dir}\nFiles trusted:\n{listed}\n\nTrust is remembered for exactly these files; if "
                "they change, you are asked again. Trust them only if you know where this model came from.\n\n"
                "Trust it and run again?")
    return ask_yes_no(parent, "Trust this model?", question)


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def ask_image_path(parent: QWidget | None, folder: str) -> str:
    """An image file to open, chosen in a dialog that starts in ``folder``; '' when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "Open an image", folder, IMAGE_FILTER)
    return path


def ask_save_path(parent: QWidget | None, suggested: Path) -> str:
    """A file to save a segmentation to, chosen in a dialog that starts at ``suggested``; '' when cancelled."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save segmentation", str(suggested), LABELS_FILTER)
    return path

"""Dialogs for the person at the screen: messages in plain words (never a traceback), and file choices.

The file dialogs are Qt's own (not the system's) on every platform: only Qt's can list DICOM files, which often have
no extension, next to the image files, offer a DICOM series folder as a choice, and rename the proposed file when
another file type is picked.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qtpy.QtCore import QModelIndex, QSortFilterProxyModel
from qtpy.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QWidget,
)

from ..controllers.files import LABEL_SUFFIXES, labels_name

IMAGE_FILTERS = ("Images and DICOM files (*)", "All files (*)")  # the first is narrowed by ImageFileFilter
IMAGE_SUFFIXES = (*LABEL_SUFFIXES, ".dicom", ".ima", ".zip")  # .dcm is among the labels suffixes (DICOM SEG)
LABELS_FILTERS = ("NIfTI (*.nii.gz *.nii)", "NRRD (*.nrrd)", "MetaImage (*.mha *.mhd)")
DICOM_SEG_FILTER = "DICOM SEG (*.dcm)"  # offered for labels made from a DICOM series: BINARY, read everywhere
DICOM_LABELMAP_FILTER = "DICOM SEG, label map (*.dcm)"  # DICOM's 2024 LABELMAP type: not every PACS reads it yet
LABELS_FILTER = ";;".join(LABELS_FILTERS)


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


def may_be_image(name: str) -> bool:
    """True for a file name the open dialog lists: an image file, a '.dcm' (or '.ima') file, or a name DICOM files
    typically have: no extension ('IM0001') or a number after the last dot (a UID, '1.2.840.1136.4.17')."""
    lower = name.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        return True
    stem, dot, extension = lower.rpartition(".")
    return not dot or not stem or extension.isdigit()


class ImageFileFilter(QSortFilterProxyModel):
    """What the open dialog lists: folders, and files :func:`may_be_image` accepts (everything when off)."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.narrow = True

    def set_narrow(self, narrow: bool) -> None:
        """List only images and DICOM files (True), or every file."""
        if hasattr(self, "beginFilterChange"):  # Qt 6.9 and newer: invalidateFilter() is deprecated there
            self.beginFilterChange()
            self.narrow = narrow
            self.endFilterChange()
        else:
            self.narrow = narrow
            self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:
        """Folders always; files by name while narrowed."""
        model = self.sourceModel()
        index = model.index(row, 0, parent)
        return not self.narrow or model.isDir(index) or may_be_image(model.fileName(index))


class ImageFileDialog(QFileDialog):
    """Choose an image file, any file of a DICOM series, or a DICOM series folder ("Open folder")."""

    def __init__(self, parent: QWidget | None, folder: str) -> None:
        super().__init__(parent, "Open an image or a DICOM series", folder)
        self.setOption(QFileDialog.DontUseNativeDialog, True)
        self.setOption(QFileDialog.HideNameFilterDetails, True)
        self.setFileMode(QFileDialog.ExistingFile)
        self.setAcceptMode(QFileDialog.AcceptOpen)
        self.files = ImageFileFilter(self)
        self.setProxyModel(self.files)
        self.setNameFilters(list(IMAGE_FILTERS))
        self.filterSelected.connect(self._follow_file_type)
        self.folder_button = QPushButton("Open folder")
        self.folder_button.setToolTip("Open the DICOM series in the folder selected, or in the folder shown (the "
                                      "largest series when it holds several)")
        self.folder_button.clicked.connect(self.choose_folder)
        buttons = self.findChild(QDialogButtonBox)
        if buttons is not None:
            buttons.addButton(self.folder_button, QDialogButtonBox.ActionRole)
        self.chosen = ""

    def _follow_file_type(self, *_: object) -> None:
        self.files.set_narrow(self.selectedNameFilter() == IMAGE_FILTERS[0])

    def choose_folder(self) -> None:
        """Close the dialog with the folder selected in the list, else the folder shown."""
        selected = [Path(path) for path in self.selectedFiles() if Path(path).is_dir()]
        self.chosen = str(selected[0] if selected else Path(self.directory().absolutePath()))
        QDialog.accept(self)

    def accept(self) -> None:
        super().accept()
        if self.result() == QDialog.Accepted and not self.chosen:
            self.chosen = next(iter(self.selectedFiles()), "")


class LabelsSaveDialog(QFileDialog):
    """Choose where to save labels; picking another file type renames the proposed file to match it."""

    def __init__(self, parent: QWidget | None, suggested: Path, dicom_seg: bool = False) -> None:
        super().__init__(parent, "Save segmentation", str(suggested.parent))
        self.setOption(QFileDialog.DontUseNativeDialog, True)
        self.setAcceptMode(QFileDialog.AcceptSave)
        self.setFileMode(QFileDialog.AnyFile)
        filters = [*LABELS_FILTERS, *([DICOM_SEG_FILTER, DICOM_LABELMAP_FILTER] if dicom_seg else [])]
        self.setNameFilters(filters)
        self.filterSelected.connect(self._follow_file_type)
        chosen = next((f for f in filters if suggested.name.lower().endswith(tuple(filter_suffixes(f)))), filters[0])
        self.selectNameFilter(chosen)
        self.setDefaultSuffix(filter_suffixes(chosen)[0].lstrip("."))
        self.selectFile(str(suggested))

    def file_name_edit(self) -> QLineEdit | None:
        """The line where the file name is typed."""
        return self.findChild(QLineEdit, "fileNameEdit")

    def _follow_file_type(self, name_filter: str) -> None:
        suffix = filter_suffixes(name_filter)[0]
        self.setDefaultSuffix(suffix.lstrip("."))
        edit = self.file_name_edit()
        if edit is not None and edit.text() and not self._typed_folder(edit.text()):
            edit.setText(labels_name(edit.text(), suffix))

    def _typed_folder(self, text: str) -> Path | None:
        """The folder ``text`` names (relative to the folder shown), if it names one."""
        path = Path(self.directory().absolutePath()) / text
        return path if path.is_dir() else None

    def accept(self) -> None:
        edit = self.file_name_edit()
        if edit is not None and edit.text():
            if (folder := self._typed_folder(edit.text())) is not None:  # go into it (Qt would add the default
                self.setDirectory(str(folder))                            # suffix to its name and save a file)
                edit.clear()
                return
            typed = next((s for s in LABEL_SUFFIXES if edit.text().lower().endswith(s)), None)  # a typed type wins
            edit.setText(labels_name(edit.text(), typed or filter_suffixes(self.selectedNameFilter())[0]))
        super().accept()


def filter_suffixes(name_filter: str) -> list[str]:
    """The file suffixes of a dialog filter: 'NIfTI (*.nii.gz *.nii)' -> ['.nii.gz', '.nii']."""
    return re.findall(r"\*(\.[\w.]+)", name_filter)


def ask_image_path(parent: QWidget | None, folder: str) -> str:
    """An image file, a file of a DICOM series or a DICOM series folder to open, chosen in a dialog that starts in
    ``folder``; '' when cancelled."""
    dialog = ImageFileDialog(parent, folder)
    try:
        return dialog.chosen if dialog.exec() == QDialog.Accepted else ""
    finally:
        dialog.deleteLater()


class SavePath(str):
    """The file chosen in the Save dialog, with the DICOM SEG type its file type stands for in ``seg_type``:
    'labelmap' for "DICOM SEG, label map", else 'binary' (what :meth:`FilesController.save` writes)."""

    seg_type: str = "binary"


def chosen_save_path(dialog: LabelsSaveDialog) -> SavePath:
    """The file an accepted Save dialog chose, and the DICOM SEG type of its file type."""
    chosen = SavePath(next(iter(dialog.selectedFiles()), ""))
    chosen.seg_type = "labelmap" if dialog.selectedNameFilter() == DICOM_LABELMAP_FILTER else "binary"
    return chosen


def ask_save_path(parent: QWidget | None, suggested: Path, dicom_seg: bool = False) -> str:
    """A file to save a segmentation to, chosen in a dialog that starts at ``suggested`` (also offering DICOM SEG,
    BINARY or label map, when ``dicom_seg``): a :class:`SavePath`, '' when cancelled."""
    dialog = LabelsSaveDialog(parent, suggested, dicom_seg)
    try:
        return chosen_save_path(dialog) if dialog.exec() == QDialog.Accepted else ""
    finally:
        dialog.deleteLater()

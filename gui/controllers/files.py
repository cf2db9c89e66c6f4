"""Opening images and saving segmentations, each on its own thread, with the folders remembered across sessions.

While a file is read or written the run controller is in OPENING or SAVING, so no run starts meanwhile. The layers
are added to the viewer, and the saved file reported, on the GUI thread.

Where Save starts (:meth:`FilesController.suggested_save_path`): ``<case>_segmentation`` in the input's format
(NIfTI for a DICOM series), in the input's folder when the user can write there, else in the user's documents
folder (the bundled sample's folder is part of the installation, never the user's). The folder saved to last is
remembered together with the input's folder it was saved for: it is proposed again for inputs from that same folder
(the user chose where this study's results go), never for an input from another folder, whose own folder wins.

Save writes through the engine's verified writer (:func:`~tilewise.engine.data.outputs.write_output`: staged,
checked byte for byte, fsynced, renamed): a full disk, a read-only folder or no permission is one plain line on
``save_failed`` (:func:`save_failure_message`), never a traceback, and never a truncated file under the name chosen.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QSettings, QStandardPaths, Signal
from tilewise.engine import (
    AlgorithmInfo,
    InputError,
    image_suffix,
    is_dicom_seg_output,
    refuse_overwriting_inputs,
    require_dicom_extra,
    strip_suffix,
    write_output,
)

from ..contributions import (
    bundled_data_dir,
    made_by_tilewise,
    prefer_tilewise_writer,
    read_layers,
)
from ..geometry import geometry_from_layer
from ..layers import META_ALGORITHM, META_DICOM_FILES, META_NAMES, META_SOURCES
from .run import RunController, State
from .tasks import BackgroundTask

SETTINGS_OPEN_FOLDER = "files/open_folder"
SETTINGS_SAVE_FOLDER = "files/save_folder"
SETTINGS_SAVED_FOR_FOLDER = "files/save_folder_input"  # the folder of the input whose labels went to save_folder
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")
"""What Save writes: image files, and '.dcm' a DICOM SEG (labels made from a DICOM series only)."""
DEFAULT_LABEL_SUFFIX = LABEL_SUFFIXES[0]


def describe_input(path: str | Path | list[str | Path]) -> str:
    """How an image being opened is named: 'ct.nii.gz', 't1.nii.gz (+2)' for one file per channel, and 'the DICOM
    series in <folder>' for a file that is no image file (one file of a series stands for its series)."""
    first = Path(path if isinstance(path, (str, Path)) else path[0])
    named = first.is_dir() or image_suffix(first) or first.name.lower().endswith(".zip")
    name = first.name if named else f"the DICOM series in {first.parent.name}"
    return name + ("" if isinstance(path, (str, Path)) or len(path) == 1 else f" (+{len(path) - 1})")


def labels_name(name: str, suffix: str) -> str:
    """``name`` with the labels file type ``suffix``: every image suffix at its end is replaced, so a name never
    ends in a mix such as '.nii.nrrd' ('ct_segmentation.nii.gz', '.nrrd' -> 'ct_segmentation.nrrd')."""
    stripped = True
    while stripped:
        stripped = False
        for old in (*LABEL_SUFFIXES, ".gz"):
            if name.lower().endswith(old) and len(name) > len(old):
                name, stripped = name[: -len(old)], True
    return name + suffix


def segmentation_name(source: Path) -> str:
    """The file name proposed for the labels of input ``source``: '<case>_segmentation' in the input's format
    ('ct.nrrd' -> 'ct_segmentation.nrrd'), NIfTI for a DICOM series folder or any other input."""
    suffix = image_suffix(source)
    if source.is_dir():
        case = source.name
    else:  # a DICOM file stands for its series: its folder names the case
        case = strip_suffix(source) if suffix or source.name.lower().endswith(".zip") else source.parent.name
    return f"{case}_segmentation{suffix if suffix in LABEL_SUFFIXES else DEFAULT_LABEL_SUFFIX}"


def documents_folder() -> Path:
    """The user's documents folder (their home folder when the system names none)."""
    location = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation)
    return Path(location) if location and Path(location).is_dir() else Path.home()


def _is_users_folder(folder: Path) -> bool:
    """True for a folder the user can write to that is not part of Tilewise's installation (the sample's)."""
    bundled = bundled_data_dir()
    if bundled is not None and folder.resolve().is_relative_to(bundled):
        return False
    return folder.is_dir() and os.access(folder, os.W_OK)


class FilesController(QObject):
    """Reads images into the viewer and writes labels layers with their image's geometry, off the GUI thread."""

    opened = Signal(list)             # the layers added to the viewer
    open_failed = Signal(str)         # a plain message
    saved = Signal(object)            # the Path written
    save_failed = Signal(object, str)  # the Path that could not be written, a plain message

    def __init__(self, viewer: Any, settings: QSettings, run: RunController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.settings = settings
        self.run = run
        self.reader: BackgroundTask | None = None
        self.writer: BackgroundTask | None = None
        self._open_path = Path()
        self._target = Path()
        self._target_input: Path | None = None
        self._private: list[Path] = []
        viewer.layers.selection.events.active.connect(self._on_active_layer)

    def _on_active_layer(self, event: Any) -> None:
        """napari's File > Save Selected Layers offers Tilewise's writer first for labels Tilewise made."""
        prefer_tilewise_writer(made_by_tilewise(event.value))

    def keep_private(self, folder: Path) -> None:
        """Images opened from under ``folder`` (the viewer's own copy of PACS series) are never the place Save
        proposes, nor remembered as the folder to open from."""
        if folder not in self._private:
            self._private.append(folder)

    def _is_private(self, path: Path) -> bool:
        return any(path.is_relative_to(folder) for folder in self._private)

    # ---- opening ------------------------------------------------------------------------------------
    def open_folder(self) -> str:
        """The folder of the last image opened ('' before the first)."""
        return str(self.settings.value(SETTINGS_OPEN_FOLDER, "") or "")

    def open(self, path: str | Path | list[str | Path]) -> bool:
        """Start reading an image (one file per channel when a list) on its own thread; False if busy.

        ``opened`` follows with the layers added, or ``open_failed`` with a plain message.
        """
        if not self.run.enter(State.OPENING):
            return False
        argument = path if isinstance(path, (str, Path)) else [str(p) for p in path]
        reader = BackgroundTask(read_layers, argument)
        reader.succeeded.connect(self._on_read)
        reader.failed.connect(self._on_read_failed)
        self.reader = reader
        self._open_path = Path(argument if isinstance(argument, (str, Path)) else argument[0])
        reader.start()
        return True

    def _finish_reading(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.wait(10_000)  # it has emitted its last signal
            reader.deleteLater()
        self.run.leave(State.OPENING)

    def _on_read(self, layer_data: list) -> None:
        self._finish_reading()
        added = [self.viewer.add_image(data, **kwargs) for data, kwargs, _ in layer_data]
        if not self._is_private(self._open_path):
            self.settings.setValue(SETTINGS_OPEN_FOLDER, str(self._open_path.parent))
        self.opened.emit(added)

    def _on_read_failed(self, message: str) -> None:
        self._finish_reading()
        self.open_failed.emit(message)

    # ---- saving -------------------------------------------------------------------------------------
    def suggested_save_path(self, run_layers: list[Any], result: Any) -> Path:
        """Where the Save dialog starts for ``result`` (labels made from image ``run_layers``): see the module's
        docstring."""
        source = _input_of(run_layers, result)
        remembered = str(self.settings.value(SETTINGS_SAVE_FOLDER, "") or "")
        saved_for = str(self.settings.value(SETTINGS_SAVED_FOR_FOLDER, "") or "")
        last = Path(remembered) if remembered and Path(remembered).is_dir() else None
        if source is None:
            name = f"{run_layers[0].name}_segmentation{DEFAULT_LABEL_SUFFIX}" if run_layers else f"segmentation{DEFAULT_LABEL_SUFFIX}"
            return (last or documents_folder()) / name
        if last is not None and saved_for == str(source.parent):
            folder = last
        elif _is_users_folder(source.parent) and not self._is_private(source):
            folder = source.parent
        else:  # Tilewise's own folders (the sample's, the copies of PACS series) are never proposed
            folder = documents_folder()
        return folder / segmentation_name(source)

    def save(self, layer: Any, path: str | Path, seg_type: str | None = None) -> Path | None:
        """Start writing labels ``layer`` with its input's geometry to ``path`` ('.nii.gz' added without a labels
        suffix) on its own thread; ``saved`` or ``save_failed`` follows. Returns the file, or None if busy.

        A DICOM SEG is of ``seg_type`` ('binary' or 'labelmap'); by default the one the Save dialog's file type
        chose (``path.seg_type``, see the panels' ``SavePath``), else 'binary', which every PACS reads.

        Raises :class:`~tilewise.engine.errors.InputError` (nothing started) when the file is an open image or one
        the labels were made from.
        """
        target = Path(path)
        if not any(target.name.lower().endswith(s) for s in LABEL_SUFFIXES):
            target = target.with_name(target.name + ".nii.gz")
        refuse_overwriting_inputs([target], self._open_sources(layer))
        seg_type = seg_type or str(getattr(path, "seg_type", "") or "binary")
        writing = (write_output, *output_arguments(layer, target), seg_type)
        if not self.run.enter(State.SAVING):
            return None
        writer = BackgroundTask(*writing)
        writer.succeeded.connect(self._on_saved)
        writer.failed.connect(self._on_save_failed)
        self.writer = writer
        self._target = target
        self._target_input = _input_of([], layer)
        writer.start()
        return target

    def _open_sources(self, result: Any) -> list[Path]:
        """The files behind the result and every open image: Save must never write over one of them."""
        sources = [Path(s) for s in result.metadata.get(META_SOURCES, [])]
        return sources + [Path(s) for layer in self.viewer.layers if (s := layer.metadata.get("tilewise_source"))]

    def _finish_saving(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.wait(10_000)
            writer.deleteLater()
        self.run.leave(State.SAVING)

    def _on_saved(self, target: Path) -> None:
        self._finish_saving()
        self.settings.setValue(SETTINGS_SAVE_FOLDER, str(target.parent))
        source = self._target_input
        self.settings.setValue(SETTINGS_SAVED_FOR_FOLDER, str(source.parent) if source is not None else "")
        self.saved.emit(target)

    def _on_save_failed(self, message: str) -> None:
        self._finish_saving()
        self.save_failed.emit(self._target, save_failure_message(message, self._target))

    def shutdown(self) -> None:
        """Wait for a file being read or written (the window is closing); nothing is reported afterwards."""
        for task in (self.reader, self.writer):
            if task is not None:
                try:
                    task.succeeded.disconnect()
                    task.failed.disconnect()
                    task.wait()
                except (RuntimeError, TypeError):
                    pass
        self.reader = self.writer = None
        self.run.leave(State.OPENING)
        self.run.leave(State.SAVING)


def save_failure_message(message: str, target: Path) -> str:
    """What ``save_failed`` says: ``message`` on one line, without a leading '<target>: ' (the dialog names the
    file already)."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    prefix = f"{target}: "
    return text.removeprefix(prefix)


def _input_of(run_layers: list[Any], result: Any) -> Path | None:
    """The file or DICOM folder the labels ``result`` were made from (from image layers ``run_layers``, else from
    its own metadata); None when they were made from an image that came from no file."""
    for layer in (*run_layers[:1], result):
        metadata = getattr(layer, "metadata", None) or {}
        source = metadata.get("tilewise_source") or next(iter(metadata.get(META_SOURCES) or []), "")
        if source:
            return Path(source)
    return None


def output_arguments(layer: Any, target: Path) -> tuple[Any, ...]:
    """What :func:`write_output` needs to write result ``layer`` at ``target``; raises :class:`InputError` (nothing
    started) for a DICOM SEG of labels not made from a DICOM series, or without the ``dicom`` extra."""
    files = tuple(Path(p) for p in layer.metadata.get(META_DICOM_FILES) or [])
    if is_dicom_seg_output(target):
        if not files:
            raise InputError(target, "a DICOM SEG needs labels made from a DICOM series; save this one as NIfTI, "
                                     "NRRD or MetaImage")
        require_dicom_extra("dicom-seg")
    algorithm = layer.metadata.get(META_ALGORITHM) or AlgorithmInfo(model_name="Tilewise segmentation")
    return (np.asarray(layer.data), geometry_from_layer(layer), files, dict(layer.metadata.get(META_NAMES) or {}),
            algorithm, target)

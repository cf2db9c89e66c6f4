"""Opening images and saving segmentations, each on its own thread, with the folders remembered across sessions.

While a file is read or written the run controller is in OPENING or SAVING, so no run starts meanwhile. The layers
are added to the viewer, and the saved file reported, on the GUI thread.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QSettings, Signal

from tilewise.engine import write_labels
from tilewise.engine.data.readers import strip_suffix
from tilewise.engine.data.safe_output import refuse_overwriting_inputs

from ..contributions import read_layers
from ..geometry import geometry_from_layer
from ..layers import META_SOURCES
from .run import RunController, State
from .tasks import BackgroundTask

SETTINGS_OPEN_FOLDER = "files/open_folder"
SETTINGS_SAVE_FOLDER = "files/save_folder"
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def describe_input(path: str | Path | list[str | Path]) -> str:
    """How an image being opened is named: 'ct.nii.gz', or 't1.nii.gz (+2)' for one file per channel."""
    first = Path(path if isinstance(path, (str, Path)) else path[0])
    return first.name + ("" if isinstance(path, (str, Path)) or len(path) == 1 else f" (+{len(path) - 1})")


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
        self.settings.setValue(SETTINGS_OPEN_FOLDER, str(self._open_path.parent))
        self.opened.emit(added)

    def _on_read_failed(self, message: str) -> None:
        self._finish_reading()
        self.open_failed.emit(message)

    # ---- saving -------------------------------------------------------------------------------------
    def suggested_save_path(self, run_layers: list[Any], result: Any) -> Path:
        """Where the Save dialog starts for ``result`` (labels made from image ``run_layers``): the folder saved to
        last (else the image's), '<image>_segmentation'."""
        run_source = run_layers[0].metadata.get("tilewise_source") if run_layers else ""
        source = run_source or (result.metadata.get("tilewise_source") if result is not None else "") or ""
        base = Path(source) if source else Path.home() / "image"
        remembered = str(self.settings.value(SETTINGS_SAVE_FOLDER, "") or "")
        folder = Path(remembered) if remembered and Path(remembered).is_dir() else base.parent
        return folder / f"{strip_suffix(base)}_segmentation.nii.gz"

    def save(self, layer: Any, path: str | Path) -> Path | None:
        """Start writing labels ``layer`` with its input's geometry to ``path`` ('.nii.gz' added without a labels
        suffix) on its own thread; ``saved`` or ``save_failed`` follows. Returns the file, or None if busy.

        Raises :class:`~tilewise.engine.errors.InputError` (nothing started) when the file is an open image or one
        the labels were made from.
        """
        target = Path(path)
        if not any(target.name.lower().endswith(s) for s in LABEL_SUFFIXES):
            target = target.with_name(target.name + ".nii.gz")
        refuse_overwriting_inputs([target], self._open_sources(layer))
        if not self.run.enter(State.SAVING):
            return None
        writer = BackgroundTask(_write_file, np.asarray(layer.data), geometry_from_layer(layer), target)
        writer.succeeded.connect(self._on_saved)
        writer.failed.connect(self._on_save_failed)
        self.writer = writer
        self._target = target
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
        self.saved.emit(target)

    def _on_save_failed(self, message: str) -> None:
        self._finish_saving()
        self.save_failed.emit(self._target, message)

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


def _write_file(labels: np.ndarray, geometry: Any, target: Path) -> Path:
    write_labels(labels, geometry, target)
    return target

"""Saving a result: the Save dialog (where it starts, which types it offers), writing on its own thread, and what
the review and the status line say while and after it is written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QWidget
from tilewise.engine import InputError

from ..controllers.files import FilesController
from ..controllers.results import ResultsController
from ..controllers.run import RunController, State
from ..layers import META_DICOM_FILES, is_result
from ..panels.dialogs import ask_save_path
from ..panels.dock import DockPanels
from .report import Reporter


class SaveFlow(QObject):
    """Save a result with its input's geometry, asking for a file name first."""

    saved = Signal(str)  # the file written; "" when saving failed

    def __init__(self, parent: QWidget, viewer: Any, panels: DockPanels, run: RunController,
                 results: ResultsController, files: FilesController, reporter: Reporter) -> None:
        super().__init__(parent)
        self._parent = parent
        self._viewer = viewer
        self._panels = panels
        self._run = run
        self._results = results
        self._files = files
        self._reporter = reporter
        files.saved.connect(self._on_saved)
        files.save_failed.connect(self._on_failed)

    def reviewed(self) -> Any:
        """The result the review shows and Save writes: the one selected in napari, else the selected image's (after
        a run: its new result); None when none is selected."""
        layer = self._results.reviewed()
        return layer if is_result(layer) else None

    def suggested_path(self, layer: Any = None) -> Path:
        """Where the Save dialog starts for result ``layer`` (default: the one reviewed): the folder saved to last
        (else its image's), '<image>_segmentation'."""
        layer = layer if layer is not None else self.reviewed()
        image = self._results.image_of(layer)
        return self._files.suggested_save_path([image] if image is not None else [], layer)

    def ask_and_save(self) -> None:
        """The Save button: ask for a file name, then save the result reviewed."""
        self.save()

    def save(self, path: str | Path | None = None, layer: Any = None) -> bool:
        """Start writing result ``layer`` (default: the one reviewed) with its input's geometry (asks for a file name
        when ``path`` is None). The file is written on its own thread; ``saved`` is emitted with its path ("" on
        failure). False when nothing was started."""
        layer = layer if layer is not None else self.reviewed()
        if layer is None or layer not in self._viewer.layers:
            self._reporter.report("Nothing to save", "Select a segmentation in the layer list, or run one first.")
            return False
        if self._run.state is not State.IDLE:
            return False
        if path is None:
            path = ask_save_path(self._parent, self.suggested_path(layer),
                                 dicom_seg=bool(layer.metadata.get(META_DICOM_FILES)))
            if not path:
                return False
        try:
            target = self._files.save(layer, path)
        except InputError as error:
            self._reporter.report("The segmentation was not saved", str(error))
            return False
        if target is None:
            return False
        self._results.start_saving(layer)  # the file holds the labels as they are now
        self._panels.run.show_message(f"Saving to {target}…")
        return True

    def _on_saved(self, target: Path) -> None:
        self._results.finish_saving(True)
        self._panels.run.show_message(f"Saved to {target}")
        self.saved.emit(str(target))

    def _on_failed(self, target: Path, message: str) -> None:
        self._results.finish_saving(False)
        self._panels.run.show_message("The segmentation was not saved (see the message).")
        self._reporter.report("The segmentation could not be saved", f"{target}: {message}")
        self.saved.emit("")

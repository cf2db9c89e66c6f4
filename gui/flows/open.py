"""Opening an image: the file dialog, reading on its own thread, then choosing the new layers as the model's input."""
from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QWidget

from ..controllers.files import FilesController, describe_input
from ..controllers.run import State
from ..panels.dialogs import ask_image_path
from ..panels.dock import DockPanels
from .report import Reporter


class OpenFlow(QObject):
    """Open an image file (or one file per channel) and choose its layers for the model's channels."""

    opened = Signal(list)  # the layers added; [] when the image could not be opened

    def __init__(self, parent: QWidget, panels: DockPanels, files: FilesController, reporter: Reporter) -> None:
        super().__init__(parent)
        self._parent = parent
        self._panels = panels
        self._files = files
        self._reporter = reporter
        files.opened.connect(self._on_opened)
        files.open_failed.connect(self._on_failed)

    def ask_and_open(self) -> None:
        """Ask for an image file and open it (the dialog starts in the folder of the last image opened)."""
        path = ask_image_path(self._parent, self._files.open_folder())
        if path:
            self.open(path)

    def can_open(self) -> bool:
        """True when an image could be opened now (no run, no file being read or written)."""
        return self._files.run.state is State.IDLE

    def open(self, path: str | Path | list[str | Path]) -> bool:
        """Start reading an image (one file per channel when a list) on its own thread; False if busy."""
        if not self._files.open(path):
            return False
        name = describe_input(path)
        self._panels.image.show_opening(name)
        self._panels.run.start_activity(f"Tilewise: opening {name}", unit="file")
        return True

    def _on_opened(self, added: list) -> None:
        channels = len(self._panels.image.channel_combos)
        if added and channels:
            self._panels.image.select(*[layer.name for layer in added][:channels])
        self.opened.emit(added)

    def _on_failed(self, message: str) -> None:
        self._reporter.report("The image could not be opened", message)
        self.opened.emit([])

"""Work off the GUI thread: reading a volume (and its display range), writing labels, counting voxels.

SimpleITK decompresses and compresses gzip data for seconds on large volumes; done on the GUI thread that would
freeze the window. A :class:`BackgroundTask` runs one such call on its own thread and hands the result back as a
signal; the files controller then adds the layer (or reports the saved file) on the GUI thread.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QThread, Signal
from tilewise.engine import TilewiseError, is_out_of_memory


def file_error_message(error: BaseException) -> str:
    """A plain explanation of a failed read or write, never a traceback."""
    if isinstance(error, TilewiseError):
        return str(error)
    if is_out_of_memory(error):
        return "There is not enough memory for this image. Close other programs or images and try again."
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename})" if error.filename else str(error)
    return f"An unexpected problem: {type(error).__name__}: {error}"


class BackgroundTask(QThread):
    """Runs ``function(*args)`` once on its own thread; emits ``succeeded(result)`` or ``failed(message)``."""

    succeeded = Signal(object)
    failed = Signal(str)

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        super().__init__()
        self._function = function
        self._args = args

    def run(self) -> None:  # noqa: D102 - QThread entry point
        try:
            result = self._function(*self._args)
        except Exception as error:  # noqa: BLE001 - every failure becomes a dialog
            self.failed.emit(file_error_message(error))
        else:
            self.succeeded.emit(result)

"""Work off the GUI thread on superqt's workers: reading a volume (and its display range), writing labels, counting
voxels, and what the run and the time estimates share.

SimpleITK decompresses and compresses gzip data for seconds on large volumes; done on the GUI thread that would
freeze the window. A :class:`BackgroundTask` runs one such call on a superqt :class:`~superqt.utils.FunctionWorker`
and hands the result back as a signal; the files controller then adds the layer (or reports the saved file) on the
GUI thread.

Every worker here runs in Qt's global thread pool, where superqt keeps it referenced until it has ended and
:meth:`WorkerBase.await_workers <superqt.utils.WorkerBase.await_workers>` asks it to quit and waits for it when the
application quits (:func:`start_worker`): no module of ours keeps threads alive.
"""
from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QCoreApplication, QObject, QThreadPool, Signal
from superqt.utils import FunctionWorker, WorkerBase
from tilewise.engine import TilewiseError, is_out_of_memory

_AWAITS_WORKERS = "tilewise_awaits_workers"
"""The application property that says :func:`start_worker` has hooked ``await_workers`` to its ``aboutToQuit``."""


def file_error_message(error: BaseException) -> str:
    """A plain explanation of a failed read or write, never a traceback."""
    if isinstance(error, TilewiseError):
        return str(error)
    if is_out_of_memory(error):
        return "There is not enough memory for this image. Close other programs or images and try again."
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename})" if error.filename else str(error)
    return f"An unexpected problem: {type(error).__name__}: {error}"


def show_warning(arguments: tuple) -> None:
    """Print a warning a worker caught (superqt's ``warned`` signal carries ``showwarning``'s arguments), unless the
    application's filters ignore it.

    Printed, not warned again: while a worker runs, superqt routes every thread's warnings to that worker's
    ``warned`` signal (its own filter lets every warning through), so warning again here would come straight back.
    """
    message, category, filename, lineno = arguments[:4]
    line = arguments[5] if len(arguments) > 5 else None
    if _filter_action(str(message), category, filename, lineno) != "ignore":
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


_SUPERQT_FILTER = ("always", None, Warning, None, 0)
"""The filter superqt puts in front while a worker runs (``warnings.filterwarnings("always")``)."""


def _filter_action(text: str, category: type[Warning], filename: str, lineno: int) -> str:
    """What the application's warning filters (without superqt's) do with this warning, as ``warnings`` decides."""
    module = next((name for name, loaded in list(sys.modules.items())
                   if getattr(loaded, "__file__", None) == filename), filename.removesuffix(".py"))
    for action, message, kind, module_pattern, only_line in warnings.filters:
        if (action, message, kind, module_pattern, only_line) == _SUPERQT_FILTER:
            continue
        if ((message is None or message.match(text)) and issubclass(category, kind)
                and (module_pattern is None or module_pattern.match(module)) and only_line in (0, lineno)):
            return action
    return warnings.defaultaction


def start_worker(worker: WorkerBase) -> None:
    """Start ``worker`` in Qt's global thread pool, with a thread of its own, awaited when the application quits."""
    pool = QThreadPool.globalInstance()
    # the pool holds as many threads as cores (2 here): a run, a timing and a file read must not queue behind
    # one another, so make room for every worker not yet ended plus this one
    needed = max(len(WorkerBase._worker_set), pool.activeThreadCount()) + 1
    if pool.maxThreadCount() < needed:
        pool.setMaxThreadCount(needed)
    app = QCoreApplication.instance()
    if app is not None and not app.property(_AWAITS_WORKERS):
        # napari's own application does this too; a viewer inside another Qt application may not
        app.aboutToQuit.connect(WorkerBase.await_workers)
        app.setProperty(_AWAITS_WORKERS, True)
    worker.warned.connect(show_warning)
    WorkerBase.start(worker)  # superqt's own start: a worker's start() may be the caller


class Awaitable:
    """Mixed into a superqt worker: the GUI thread can wait for its end, as it could for a ``QThread``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._began = threading.Event()
        self._ended = threading.Event()

    def run(self) -> None:  # QRunnable's entry point: superqt's run, then the end is marked
        self._began.set()
        try:
            super().run()  # type: ignore[misc]
        except RuntimeError as error:
            # the window closed while an aborted worker was ending: Qt deleted its signals, nobody is listening
            if "Signal source has been deleted" not in str(error):
                raise
        finally:
            # superqt's run returns without 'finished' on a RuntimeError it takes for a deleted object
            self._ended.set()

    def wait(self, msecs: int = -1) -> bool:
        """Block until the worker has ended (True), at most ``msecs`` milliseconds (negative: no limit)."""
        return self._ended.wait(None if msecs < 0 else msecs / 1000)

    def has_begun(self) -> bool:
        """True once a pool thread has taken the worker up (False while it waits to start)."""
        return self._began.is_set()

    def has_ended(self) -> bool:
        """True once the worker has emitted its last signal and left its work."""
        return self._ended.is_set()


class FileWorker(Awaitable, FunctionWorker):
    """A :class:`~superqt.utils.FunctionWorker` that can be waited for."""


class BackgroundTask(QObject):
    """Runs ``function(*args)`` once off the GUI thread; emits ``succeeded(result)`` or ``failed(message)`` there.

    A thin adapter around a superqt :class:`FileWorker` that keeps the surface of the ``QThread`` it replaced:
    :meth:`start`, :meth:`wait` and ``deleteLater()``.
    """

    succeeded = Signal(object)
    failed = Signal(str)

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        super().__init__()
        self._worker = FileWorker(function, *args)
        # bound methods of this QObject, which lives on the GUI thread: Qt queues the calls there
        self._worker.returned.connect(self._on_returned)
        self._worker.errored.connect(self._on_errored)

    def start(self) -> None:
        """Run the function on a thread of the pool."""
        start_worker(self._worker)

    def wait(self, msecs: int = -1) -> bool:
        """Block until the function has returned or failed (True), at most ``msecs`` milliseconds (negative: no
        limit)."""
        return self._worker.wait(msecs)

    def _on_returned(self, result: Any) -> None:
        self.succeeded.emit(result)

    def _on_errored(self, error: BaseException) -> None:
        self.failed.emit(file_error_message(error))

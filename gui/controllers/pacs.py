"""Talking to the configured PACS servers off the GUI thread: study and series lists, a series pulled with progress
and cancel, a result sent as a DICOM SEG, and the settings dialog's connection test.

Every call runs on a superqt worker (:class:`~.tasks.BackgroundTask`) and answers with a signal on the GUI thread; a
failure is one plain line (the engine's :class:`~tilewise.engine.PacsError` message, never a traceback). Answers to a
request that a newer one replaced are dropped. Pulled series go into a private temporary folder that is removed
when the viewer closes; a cancelled or failed pull leaves nothing there (:func:`~tilewise.engine.fetch_series`).
Series are named by UID in what is written or logged, never by the patient's name.

The engine's PACS functions are looked up on ``tilewise.engine`` when called (``engine.list_studies``), so that the
viewer loads even where the engine's PACS extra or its exports are missing; only the PACS features then fail.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Signal
from tilewise import engine
from tilewise.engine import CancelToken, Cancelled, write_output

if TYPE_CHECKING:
    from tilewise.engine import SeriesInfo, StudySearch

from .pacs_servers import PasswordStore, ServerBook, ServerSettings
from .tasks import BackgroundTask


def series_label(series: SeriesInfo) -> str:
    """A series' name as the viewer shows it, safe as a folder name: 'CT 3 chest 5mm' (modality, number,
    description; never the patient's name)."""
    parts = [series.modality, str(series.number) if series.number is not None else "", series.description]
    text = " ".join(part for part in parts if part) or "series"
    return "".join(c if c.isalnum() or c in " -_.()" else "_" for c in text)[:80].strip(" .") or "series"


def connection(server: ServerSettings, passwords: PasswordStore) -> Any:
    """The engine's connection to ``server`` with its password (a worker thread's call: the keyring may wait)."""
    return engine.open_server(server.address, server.user, passwords.load(server.name) if server.user else "",
                       server.ae_title, server.verify_tls)


def _pull(server: ServerSettings, passwords: PasswordStore, series: SeriesInfo, folder: Path,
          progress: Callable[[int], None], cancel: CancelToken) -> Path | None:
    """The series pulled whole into ``folder``; None when cancelled (nothing is left of it then)."""
    try:
        return engine.fetch_series(connection(server, passwords), series.study_uid, series.series_uid, folder,
                                   progress, cancel)
    except Cancelled:
        return None


def _send(server: ServerSettings, passwords: PasswordStore, arguments: tuple, target: Path) -> str:
    """Write the DICOM SEG at ``target``, store it on ``server``, remove it; the success line."""
    try:
        write_output(*arguments)
        connection(server, passwords).store(target)
    finally:
        target.unlink(missing_ok=True)
    return f"Stored in {server.name}, in the same study."


def _test(server: ServerSettings, password: str) -> str:
    server_connection = engine.open_server(server.address, server.user, password, server.ae_title, server.verify_tls)
    return engine.check_connection(server_connection)


class PacsController(QObject):
    """The viewer's PACS work; one request of each kind at a time (a newer one replaces an older one's answer)."""

    studies_found = Signal(list)      # [StudyInfo, ...]
    series_found = Signal(list)       # [SeriesInfo, ...]
    browse_failed = Signal(str)       # a plain line
    pull_progress = Signal(int, int)  # instances received, of total (0: unknown)
    pulled = Signal(object, object)   # the series folder (Path), its SeriesInfo
    pull_ended = Signal(str)          # "cancelled", or a plain line why it failed
    sent = Signal(str)                # the success line
    send_failed = Signal(str)         # a plain line
    tested = Signal(bool, str)        # answered?, a plain line

    def __init__(self, book: ServerBook, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.book = book
        self._tasks: dict[str, BackgroundTask] = {}  # the newest request of each kind
        self._running: set[BackgroundTask] = set()  # every request not yet ended (replaced ones too)
        self._cancel: CancelToken | None = None
        self._total = 0
        self._root: Path | None = None

    @property
    def passwords(self) -> PasswordStore:
        """Where the servers' passwords are kept."""
        return self.book.passwords

    def folder(self) -> Path:
        """The private folder pulled series go into (made at the first pull, removed by :meth:`shutdown`)."""
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="tilewise-pacs-"))
        return self._root

    def busy(self, kind: str) -> bool:
        """True while a request of ``kind`` ('browse', 'pull', 'send', 'test') runs."""
        return kind in self._tasks

    # ---- requests -------------------------------------------------------------------------------------
    def search(self, server: ServerSettings, search: StudySearch) -> None:
        """List the studies on ``server`` that match ``search``: ``studies_found`` or ``browse_failed``."""
        self._start("browse", self.studies_found.emit, self.browse_failed.emit,
                    lambda: engine.list_studies(connection(server, self.passwords), search))

    def list_series(self, server: ServerSettings, study_uid: str) -> None:
        """List the series of a study: ``series_found`` or ``browse_failed``."""
        self._start("browse", self.series_found.emit, self.browse_failed.emit,
                    lambda: engine.list_series(connection(server, self.passwords), study_uid))

    def pull(self, server: ServerSettings, series: SeriesInfo) -> bool:
        """Pull ``series`` whole into the private folder: ``pull_progress`` per instance, then ``pulled`` or
        ``pull_ended``. False while another pull runs."""
        if self.busy("pull"):
            return False
        folder = self.folder() / series.series_uid
        target = folder / series_label(series)  # the folder's name becomes the image layer's name
        if target.is_dir():  # pulled whole before, in this session: opened again as it is
            self.pulled.emit(target, series)
            return True
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self._cancel = CancelToken()
        self._total = series.instances
        self.pull_progress.emit(0, self._total)
        self._start("pull", lambda path: self._on_pulled(path, series), self.pull_ended.emit,
                    _pull, server, self.passwords, series, target, self._progressed, self._cancel)
        return True

    def cancel_pull(self) -> None:
        """Stop the pull at its next instance; ``pull_ended('cancelled')`` follows once its files are removed."""
        if self._cancel is not None:
            self._cancel.cancel()

    def send(self, server: ServerSettings, arguments: tuple) -> bool:
        """Write a DICOM SEG (``write_output``'s ``arguments``, its path replaced) and store it on ``server``:
        ``sent`` or ``send_failed``. False while another send runs."""
        if self.busy("send"):
            return False
        target = Path(tempfile.mkdtemp(prefix="tilewise-send-")) / "segmentation.dcm"
        arguments = (*arguments[:5], target, *arguments[6:])
        self._start("send", self.sent.emit, self.send_failed.emit, _send, server, self.passwords, arguments, target)
        return True

    def test(self, server: ServerSettings, password: str) -> None:
        """Check that ``server`` answers with ``password``: ``tested``."""
        self._start("test", lambda line: self.tested.emit(True, line), lambda line: self.tested.emit(False, line),
                    _test, server, password)

    # ---- the workers --------------------------------------------------------------------------------
    def _progressed(self, received: int) -> None:  # on the pull's worker thread: a queued signal
        self.pull_progress.emit(received, self._total)

    def _on_pulled(self, path: Path | None, series: SeriesInfo) -> None:
        self._cancel = None
        if path is None:
            self.pull_ended.emit("cancelled")
        else:
            self.pulled.emit(path, series)

    def _start(self, kind: str, done: Callable[[Any], None], failed: Callable[[str], None],
               function: Callable[..., Any], *arguments: Any) -> None:
        task = BackgroundTask(function, *arguments)
        self._tasks[kind] = task
        self._running.add(task)

        def finish(answer: Any, handler: Callable[[Any], None]) -> None:
            self._running.discard(task)
            task.deleteLater()
            if self._tasks.get(kind) is not task:  # a newer request replaced this one: its answer is dropped
                return
            del self._tasks[kind]
            handler(answer)

        task.succeeded.connect(lambda answer: finish(answer, done))
        task.failed.connect(lambda message: finish(message, failed))
        task.start()

    def shutdown(self) -> None:
        """Stop a pull, wait for every request, and remove the pulled series (the window is closing)."""
        self.cancel_pull()
        for task in list(self._running):
            try:
                task.succeeded.disconnect()
                task.failed.disconnect()
            except (RuntimeError, TypeError):
                pass
            task.wait()
        self._tasks.clear()
        self._running.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


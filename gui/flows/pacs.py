"""The PACS in the viewer: Open from PACS… (browse, pull, then open as any DICOM series folder), Send to PACS (the
reviewed result as a DICOM SEG, binary as Save writes by default) and the server settings.

The network work runs in :class:`~..controllers.pacs.PacsController`; this flow connects it to the browser, the
settings dialog, the send panel and the open flow. Problems are plain lines in the dialog or panel they concern;
what is remembered for scripts (``last_error``) names series by UID, never patients.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QWidget
from tilewise.engine import InputError

if TYPE_CHECKING:
    from tilewise.engine import SeriesInfo, StudySearch

from ..controllers.files import FilesController, output_arguments
from ..controllers.pacs import PacsController
from ..controllers.pacs_servers import ServerBook
from ..controllers.tasks import BackgroundTask
from ..layers import META_DICOM_FILES
from ..panels.pacs_browser import PacsBrowser
from ..panels.pacs_send import PacsSendPanel
from ..panels.pacs_settings import PacsSettingsDialog
from .open import OpenFlow
from .report import Reporter

BUSY = "Tilewise is busy (a run, or an image being opened or saved); open the series when it has finished."


class PacsFlow(QObject):
    """Open from PACS…, Send to PACS and PACS servers…"""

    sent = Signal(str)  # the success line; "" when sending failed

    def __init__(self, parent: QWidget, book: ServerBook, pacs: PacsController, opener: OpenFlow,
                 files: FilesController, send_panel: PacsSendPanel, reporter: Reporter) -> None:
        super().__init__(parent)
        self._parent = parent
        self._book = book
        self._pacs = pacs
        self._opener = opener
        self._files = files
        self._send_panel = send_panel
        self._reporter = reporter
        self.browser: PacsBrowser | None = None
        self.settings_dialog: PacsSettingsDialog | None = None
        self._reviewed: Any = None
        self._keyring_task: BackgroundTask | None = None
        pacs.studies_found.connect(self._on_studies)
        pacs.series_found.connect(self._on_series)
        pacs.browse_failed.connect(self._on_browse_failed)
        pacs.pull_progress.connect(self._on_progress)
        pacs.pulled.connect(self._on_pulled)
        pacs.pull_ended.connect(self._on_pull_ended)
        pacs.sent.connect(self._on_sent)
        pacs.send_failed.connect(self._on_send_failed)
        pacs.tested.connect(self._on_tested)
        book.changed.connect(self._on_servers_changed)
        send_panel.send_requested.connect(self.send)
        send_panel.settings_requested.connect(self.edit_servers)
        self._on_servers_changed()

    # ---- Open from PACS… -------------------------------------------------------------------------------
    def open_browser(self) -> PacsBrowser:
        """Show the PACS browser (one per viewer; shown again where it was) and search the chosen server."""
        if self.browser is None:
            self.browser = PacsBrowser(self._parent)
            self.browser.search_requested.connect(self._on_search_requested)
            self.browser.study_chosen.connect(self._on_study_chosen)
            self.browser.open_requested.connect(self._on_open_requested)
            self.browser.cancel_requested.connect(self._pacs.cancel_pull)
            self.browser.settings_requested.connect(self.edit_servers)
            self.browser.rejected.connect(self._pacs.cancel_pull)  # closing the browser stops its pull
            self.browser.resize(980, 620)
            self.browser.set_servers([server.name for server in self._book.servers()])
        self.browser.show()
        self.browser.raise_()
        self.browser.activateWindow()
        if self.browser.server_name() and not self.browser.studies.rowCount():
            self.browser.request_search()
        return self.browser

    def _server(self, name: str) -> Any:
        server = self._book.server(name)
        if server is None and self.browser is not None:
            self.browser.show_problem(f"There is no server called {name} any more (PACS servers…).")
        return server

    def _on_search_requested(self, name: str, search: StudySearch) -> None:
        server = self._server(name)
        if server is not None:
            self._pacs.search(server, search)

    def _on_study_chosen(self, name: str, study_uid: str) -> None:
        server = self._server(name)
        if server is not None:
            self._pacs.list_series(server, study_uid)

    def _on_open_requested(self, name: str, series: SeriesInfo) -> None:
        server = self._server(name)
        if server is None or self.browser is None:
            return
        if not self._opener.can_open():
            self.browser.show_problem(BUSY)
            return
        if self._pacs.pull(server, series):
            self._files.keep_private(self._pacs.folder())  # never proposed for saving, nor remembered
            self.browser.show_pulling(True)

    def _on_studies(self, studies: list) -> None:
        if self.browser is not None:
            self.browser.show_studies(studies)

    def _on_series(self, series: list) -> None:
        if self.browser is not None:
            self.browser.show_series(series)

    def _on_browse_failed(self, message: str) -> None:
        self._reporter.remember(message)
        if self.browser is not None:
            self.browser.show_problem(message)

    def _on_progress(self, received: int, total: int) -> None:
        if self.browser is not None:
            self.browser.show_progress(received, total)

    def _on_pulled(self, folder: Path, series: SeriesInfo) -> None:
        if self.browser is not None:
            self.browser.show_pulling(False)
        if not self._opener.open(folder):
            self._reporter.remember(BUSY)
            if self.browser is not None:
                self.browser.show_problem(BUSY)
            return
        if self.browser is not None:
            self.browser.show_status(f"Opening series {series.series_uid}…")
            self.browser.accept()

    def _on_pull_ended(self, outcome: str) -> None:
        if self.browser is None:
            return
        self.browser.show_pulling(False)
        if outcome == "cancelled":
            self.browser.show_status("Cancelled: nothing was opened, and nothing of the series was kept.")
        else:
            self._reporter.remember(outcome)
            self.browser.show_problem(outcome)

    # ---- Send to PACS ----------------------------------------------------------------------------------
    def update_send_button(self, reviewed: Any, idle: bool) -> None:
        """Send to PACS follows the reviewed result (``reviewed``, None when none) and whether the dock is idle."""
        self._reviewed = reviewed
        dicom = reviewed is not None and bool(reviewed.metadata.get(META_DICOM_FILES))
        self._send_panel.show_state(sendable=reviewed is not None and idle, dicom=dicom,
                                    sending=self._pacs.busy("send"))

    def send(self, name: str, layer: Any = None) -> bool:
        """Store result ``layer`` (default: the one reviewed), with its edits, as a binary DICOM SEG on server
        ``name``, on a worker thread; ``sent`` follows. False when nothing was started (the reason is shown)."""
        layer = layer if layer is not None else self._reviewed
        server = self._book.server(name)
        problem = None if server is not None else f"There is no server called {name} (PACS servers…)."
        if layer is None or not layer.metadata.get(META_DICOM_FILES):
            problem = problem or "Only a segmentation of a DICOM series can be sent to a PACS."
        if problem is None:
            try:
                arguments = output_arguments(layer, Path("segmentation.dcm"))
            except InputError as error:
                problem = error.problem
        if problem is not None:
            self._show_send_problem(problem)
            return False
        # a copy of the labels as they are now: edits made while it is sent are not half in the SEG
        if not self._pacs.send(server, (np.array(arguments[0]), *arguments[1:], "binary")):
            return False
        self._send_panel.show_result(f"Sending to {name}…")
        self.update_send_button(self._reviewed, idle=True)
        return True

    def _on_sent(self, line: str) -> None:
        self._send_panel.show_result(line)
        self.update_send_button(self._reviewed, idle=True)
        self.sent.emit(line)

    def _on_send_failed(self, message: str) -> None:
        self._show_send_problem(f"Not sent: {message}")
        self.update_send_button(self._reviewed, idle=True)
        self.sent.emit("")

    def _show_send_problem(self, text: str) -> None:
        self._reporter.remember(text)
        self._send_panel.show_result(text, failed=True)

    # ---- PACS servers… ---------------------------------------------------------------------------------
    def edit_servers(self) -> PacsSettingsDialog:
        """Show the server settings (modal to the viewer); Save keeps them, the passwords in the keyring."""
        servers = self._book.servers()
        known = {server.name: self._book.passwords.load_known(server.name) for server in servers}
        dialog = PacsSettingsDialog(servers, known, self._book.passwords.persistent,
                                    self.browser if self.browser is not None and self.browser.isVisible()
                                    else self._parent)
        dialog.test_requested.connect(self._on_test_requested)
        dialog.accepted.connect(self._on_settings_saved)
        self.settings_dialog = dialog
        dialog.open()
        return dialog

    def _on_test_requested(self, server: Any, password: str) -> None:
        self._pacs.test(server, password)

    def _on_tested(self, answered: bool, line: str) -> None:
        if self.settings_dialog is not None:
            self.settings_dialog.show_test_result(answered, line)

    def _on_settings_saved(self) -> None:
        dialog = self.settings_dialog
        if dialog is None:
            return
        servers, passwords, former = dialog.servers(), dialog.passwords(), dialog.former_names()
        removed = [name for name in (s.name for s in self._book.servers()) if name not in former.values()]
        changes = {server.name: (former.get(server.name), passwords.get(server.name, "")) for server in servers}
        for name, (_, password) in changes.items():
            if password:
                self._book.passwords.remember(name, password)  # at once: a search right after Save uses it
        self._book.set_servers(servers)
        if self._keyring_task is not None:
            self._keyring_task.wait()  # the edits reach the keyring in the order they were saved
        self._keyring_task = BackgroundTask(self._book.passwords.save, changes, removed)  # the keyring may wait
        self._keyring_task.start()

    def _on_servers_changed(self) -> None:
        names = [server.name for server in self._book.servers()]
        self._send_panel.set_servers(names)
        if self.browser is not None:
            self.browser.set_servers(names)

    def shutdown(self) -> None:
        """Wait for the keyring to be written (the window is closing)."""
        if self._keyring_task is not None:
            self._keyring_task.wait(10_000)

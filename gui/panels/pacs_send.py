"""Send to PACS: under Review and save, a button whose menu lists the configured servers, and a line that says how
the last send went. Only a result of a DICOM series can be sent (a DICOM SEG references its source series): for any
other the button is off and its tooltip says why."""
from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QLabel, QMenu, QPushButton, QVBoxLayout, QWidget

from .common import breakable

NO_RESULT = "Run a segmentation first: Send to PACS stores the reviewed result."
NOT_DICOM = ("Only a segmentation of a DICOM series can be sent to a PACS: a DICOM SEG must reference the series it "
             "was made from. Save this one to a file instead.")
READY = "Store the reviewed result, with your edits, as a DICOM SEG in the same study on a PACS"


class PacsSendPanel(QWidget):
    """Send to PACS ▾ (one entry per configured server, then PACS servers…) and its status line."""

    send_requested = Signal(str)   # the server's name
    settings_requested = Signal()

    def __init__(self, icon_colour: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import qtawesome

        self.send_button = QPushButton(qtawesome.icon("fa5s.cloud-upload-alt", color=icon_colour), "Send to PACS")
        self.menu = QMenu(self.send_button)
        self.send_button.setMenu(self.menu)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.send_button)
        layout.addWidget(self.status)
        self.set_servers([])
        self.show_state(sendable=False, dicom=False, sending=False)

    def set_servers(self, names: list[str]) -> None:
        """The configured servers' names, as the menu's entries."""
        self.menu.clear()
        for name in names:
            self.menu.addAction(f"Send to {name}").setData(name)
        if not names:
            self.menu.addAction("No PACS server yet").setEnabled(False)
        self.menu.addSeparator()
        self.menu.addAction("PACS servers…").triggered.connect(self.settings_requested)
        for action in self.menu.actions():
            if action.data():
                action.triggered.connect(self._on_send_action)

    def show_state(self, sendable: bool, dicom: bool, sending: bool) -> None:
        """On for a result of a DICOM series (``sendable``: there is a result, ``dicom``: of a DICOM series), off
        while one is sent; the tooltip says why it is off."""
        self.send_button.setEnabled(sendable and dicom and not sending)
        self.send_button.setToolTip(READY if sendable and dicom else NOT_DICOM if sendable else NO_RESULT)
        if sending:
            self.send_button.setText("Sending…")
        else:
            self.send_button.setText("Send to PACS")

    def show_result(self, text: str, failed: bool = False) -> None:
        """How the last send went, in one plain line."""
        self.status.setStyleSheet("color: #d9534f; font-weight: bold;" if failed else "")
        self.status.setText(breakable(text))
        self.status.setVisible(bool(text))

    def _on_send_action(self) -> None:
        action = self.sender()
        if action is not None and action.data():
            self.send_requested.emit(str(action.data()))

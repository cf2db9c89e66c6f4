"""PACS servers…: add, change and remove the servers Open from PACS and Send to PACS use, and test a connection.

A view only: the servers come in and go out as :class:`~..controllers.pacs_servers.ServerSettings`, the passwords
separately (:meth:`PacsSettingsDialog.passwords`), and Test connection is a request the flow answers with
:meth:`PacsSettingsDialog.show_test_result`. Where no system keyring exists, the dialog says that passwords last
for this session only.
"""
from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from tilewise import engine
from tilewise.engine import InputError

from ..controllers.pacs_servers import DEFAULT_AE_TITLE, ServerSettings, unique_name

KEYRING_NOTE = "Passwords are kept in the system keyring, never in Tilewise's settings."
SESSION_NOTE = ("This computer has no system keyring: passwords are kept only until Tilewise closes, and asked "
                "again next time. They are never written to Tilewise's settings.")


class PacsSettingsDialog(QDialog):
    """The configured PACS servers, one edited at a time."""

    test_requested = Signal(object, str)  # ServerSettings, password

    def __init__(self, servers: list[ServerSettings], passwords: dict[str, str], keyring: bool,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS servers")
        self._servers = list(servers)
        self._passwords = dict(passwords)
        self._original = {server.name: server.name for server in servers}  # current name -> name when opened
        self._row = -1
        self.list = QListWidget()
        self.list.setMinimumWidth(150)
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        self.name = QLineEdit()
        self.address = QLineEdit()
        self.address.setPlaceholderText("https://pacs.example.org/dicom-web  or  ORTHANC@pacs.example.org:4242")
        self.address.setToolTip("A DICOMweb address (http or https, ending in the server's DICOMweb root), or a "
                                "DICOM service as AE title@host:port")
        self.ae_title = QLineEdit()
        self.ae_title.setMaxLength(16)
        self.ae_title.setToolTip("Tilewise's own AE title, as the PACS knows it (DICOM services only)")
        self.user = QLineEdit()
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.Password)
        self.password.setPlaceholderText("Leave empty to keep the saved password")
        self.verify_tls = QCheckBox("Verify the server's TLS certificate (https)")
        self.verify_tls.setChecked(True)
        self.verify_tls.setToolTip("Leave this on: off, anyone between this computer and the server could read the "
                                   "images and the password")
        self.test_button = QPushButton("Test connection")
        self.test_result = QLabel()
        self.test_result.setWordWrap(True)
        self.test_result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.keyring_note = QLabel(KEYRING_NOTE if keyring else SESSION_NOTE)
        self.keyring_note.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        self.form = QWidget()
        self._lay_out()
        self._wire()
        for server in self._servers:
            self.list.addItem(server.name)
        self.list.setCurrentRow(0 if self._servers else -1)
        self._update_form_enabled()

    def _lay_out(self) -> None:
        form = QFormLayout(self.form)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        form.addRow("Name:", self.name)
        form.addRow("Address:", self.address)
        form.addRow("Our AE title:", self.ae_title)
        form.addRow("User name:", self.user)
        form.addRow("Password:", self.password)
        form.addRow("", self.verify_tls)
        test_row = QHBoxLayout()
        test_row.addWidget(self.test_button)
        test_row.addStretch(1)
        form.addRow("", test_row)
        form.addRow("", self.test_result)
        left = QVBoxLayout()
        left.addWidget(self.list, 1)
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        left.addLayout(row)
        middle = QHBoxLayout()
        middle.addLayout(left)
        middle.addWidget(self.form, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(middle, 1)
        layout.addWidget(self.keyring_note)
        layout.addWidget(self.buttons)

    def _wire(self) -> None:
        self.list.currentRowChanged.connect(self._on_row_changed)
        self.add_button.clicked.connect(self.add_server)
        self.remove_button.clicked.connect(self.remove_server)
        self.test_button.clicked.connect(self._on_test)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        for field in (self.name, self.address, self.ae_title, self.user, self.password):
            field.textEdited.connect(self._on_edited)
        self.verify_tls.toggled.connect(self._on_edited)

    # ---- what the flow reads ---------------------------------------------------------------------------
    def servers(self) -> list[ServerSettings]:
        """The servers as edited."""
        self._store_form()
        return list(self._servers)

    def passwords(self) -> dict[str, str]:
        """The passwords as edited, by server name."""
        self._store_form()
        return {server.name: self._passwords.get(server.name, "") for server in self._servers}

    def former_names(self) -> dict[str, str]:
        """Each server's name when the dialog opened, by its name now (new servers are missing)."""
        self._store_form()
        return dict(self._original)

    # ---- what the person does --------------------------------------------------------------------------
    def add_server(self) -> None:
        """A new server, named 'PACS' (or 'PACS 2', ...), to fill in."""
        self._store_form()
        self._servers.append(ServerSettings(unique_name(self._servers), ""))
        self.list.addItem(self._servers[-1].name)
        self.list.setCurrentRow(len(self._servers) - 1)
        self.address.setFocus()
        self._update_form_enabled()

    def remove_server(self) -> None:
        """Remove the server being edited."""
        row = self.list.currentRow()
        if row < 0:
            return
        removed = self._servers.pop(row)
        self._passwords.pop(removed.name, None)
        self._original.pop(removed.name, None)
        self._row = -1
        self.list.takeItem(row)
        self._update_form_enabled()

    def show_test_result(self, answered: bool, text: str) -> None:
        """What Test connection found, in one plain line."""
        self.test_button.setEnabled(True)
        self.test_result.setStyleSheet("color: #3c9d3c;" if answered else "color: #d9534f; font-weight: bold;")
        self.test_result.setText(text)

    def accept(self) -> None:
        """Save: only when every address is one Tilewise can use (else the first problem is shown, its server
        chosen)."""
        for row, server in enumerate(self.servers()):
            problem = address_problem(server.address)
            if problem:
                self.list.setCurrentRow(row)
                self.show_test_result(False, f"{server.name}: {problem}")
                return
        super().accept()

    # ---- reactions ---------------------------------------------------------------------------------------
    def _on_test(self) -> None:
        self._store_form()
        if self._row < 0:
            return
        server = self._servers[self._row]
        problem = address_problem(server.address)
        if problem:
            self.show_test_result(False, problem)
            return
        self.test_button.setEnabled(False)
        self.test_result.setStyleSheet("")
        self.test_result.setText("Testing…")
        self.test_requested.emit(server, self._passwords.get(server.name, ""))

    def _on_row_changed(self, row: int) -> None:
        self._store_form()
        self._row = row
        server = self._servers[row] if 0 <= row < len(self._servers) else ServerSettings("", "")
        self.name.setText(server.name)
        self.address.setText(server.address)
        self.ae_title.setText(server.ae_title or DEFAULT_AE_TITLE)
        self.user.setText(server.user)
        self.password.setText(self._passwords.get(server.name, ""))
        self.verify_tls.setChecked(server.verify_tls)
        self.test_result.setText("")

    def _on_edited(self, *_: object) -> None:
        self._store_form()

    def _store_form(self) -> None:
        """Keep what the form shows in the server being edited (a name another server has is made unique)."""
        if not 0 <= self._row < len(self._servers):
            return
        old = self._servers[self._row]
        others = [server for index, server in enumerate(self._servers) if index != self._row]
        name = self.name.text().strip() or old.name
        if any(server.name == name for server in others):
            name = unique_name(others, name)
        self._servers[self._row] = ServerSettings(name, self.address.text().strip(),
                                                  self.ae_title.text().strip() or DEFAULT_AE_TITLE,
                                                  self.user.text().strip(), self.verify_tls.isChecked())
        self._passwords.pop(old.name, None)
        self._passwords[name] = self.password.text()
        if old.name in self._original and name != old.name:
            self._original[name] = self._original.pop(old.name)
        item = self.list.item(self._row)
        if item is not None and item.text() != name:
            item.setText(name)

    def _update_form_enabled(self) -> None:
        has_server = bool(self._servers)
        self.form.setEnabled(has_server)
        self.remove_button.setEnabled(has_server)


def address_problem(address: str) -> str:
    """Why ``address`` is not a server address Tilewise can use, in one sentence ('' when it is)."""
    if not address.strip():
        return "Give the server's address."
    try:
        engine.server_address(address)
    except InputError as error:
        return error.problem[:1].upper() + error.problem[1:] + "."
    return ""

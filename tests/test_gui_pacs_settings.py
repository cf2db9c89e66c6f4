"""PACS servers…: servers added in the dialog persist in QSettings (a temporary settings file) with the password in
the system keyring, never in QSettings; without a keyring the password lasts for the session and the dialog says so;
Test connection answers on a real Orthanc, and a wrong password is one plain line."""
from __future__ import annotations

from pathlib import Path

import keyring
import pytest
from gui_pacs_fixtures import orthanc  # noqa: F401
from keyring.backend import KeyringBackend
from keyring.backends import fail
from orthanc_fixture import PASSWORD, USER
from qtpy.QtCore import QSettings
from tilewise.gui.controllers.pacs_servers import KEYRING_SERVICE, ServerBook
from tilewise.gui.panels.pacs_settings import KEYRING_NOTE, SESSION_NOTE


class MemoryKeyring(KeyringBackend):
    """A system keyring of the test's own (the real ones need a desktop session)."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.stored.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.stored[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.stored.pop((service, username), None)


@pytest.fixture
def system_keyring():
    """A usable keyring for widgets built in the test; the one before afterwards."""
    before = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    yield memory
    keyring.set_keyring(before)


def _fill(qtbot, dialog, name: str, address: str, user: str, password: str) -> None:
    dialog.add_button.click()
    for field, text in ((dialog.name, name), (dialog.address, address), (dialog.user, user),
                        (dialog.password, password)):
        field.clear()
        qtbot.keyClicks(field, text)


def _tested(qtbot, dialog) -> str:
    dialog.test_button.click()
    qtbot.waitUntil(lambda: dialog.test_button.isEnabled() and dialog.test_result.text() != "Testing…",
                    timeout=30_000)
    return dialog.test_result.text()


def test_servers_persist_with_the_password_in_the_keyring_only(system_keyring, make_napari_viewer, tmp_path: Path,
                                                               qtbot, orthanc, dialogs) -> None:
    from gui_fixtures import docked_widget

    server, _ = orthanc
    viewer, widget = docked_widget(make_napari_viewer, tmp_path)
    dialog = widget.pacs_flow.edit_servers()
    assert dialog.keyring_note.text() == KEYRING_NOTE and dialog.verify_tls.isChecked()
    _fill(qtbot, dialog, "Hospital PACS", f"{server.http_url}/dicom-web", USER, "wrong-password")
    line = _tested(qtbot, dialog)
    assert "refused" in line and "check the user name and password" in line and "\n" not in line
    dialog.password.clear()
    qtbot.keyClicks(dialog.password, PASSWORD)
    assert "answered" in _tested(qtbot, dialog)
    _fill(qtbot, dialog, "Modality gateway", "not an address", "", "")
    dialog.buttons.accepted.emit()
    assert dialog.isVisible() and "not a server address" in dialog.test_result.text().lower()  # the dialog stays
    dialog.address.clear()
    qtbot.keyClicks(dialog.address, f"ORTHANC@127.0.0.1:{server.dicom_port}")
    assert "answered (C-ECHO)" in _tested(qtbot, dialog)
    dialog.buttons.accepted.emit()
    assert not dialog.isVisible()
    widget.pacs_flow.shutdown()  # the keyring has been written
    widget.qsettings.sync()

    text = (tmp_path / "settings.ini").read_text()
    assert "Hospital PACS" in text and PASSWORD not in text and "password" not in text.lower()
    assert system_keyring.stored == {(KEYRING_SERVICE, "Hospital PACS"): PASSWORD}
    again = ServerBook(QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    assert [(s.name, s.address, s.user, s.verify_tls) for s in again.servers()] == [
        ("Hospital PACS", f"{server.http_url}/dicom-web", USER, True),
        ("Modality gateway", f"ORTHANC@127.0.0.1:{server.dicom_port}", "", True)]
    assert again.passwords.load("Hospital PACS") == PASSWORD  # a new session finds it in the keyring
    assert [a.text() for a in widget.send_panel.send_button.menu().actions()][:2] == [
        "Send to Hospital PACS", "Send to Modality gateway"]

    dialog = widget.pacs_flow.edit_servers()  # removing a server removes its password too
    dialog.list.setCurrentRow(0)
    dialog.remove_button.click()
    dialog.buttons.accepted.emit()
    widget.pacs_flow.shutdown()
    assert system_keyring.stored == {}
    assert [s.name for s in widget.pacs_servers.servers()] == ["Modality gateway"]
    widget.shutdown()


def test_without_a_keyring_the_password_lasts_for_the_session(make_napari_viewer, tmp_path: Path, qtbot,
                                                              dialogs) -> None:
    from gui_fixtures import docked_widget

    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        viewer, widget = docked_widget(make_napari_viewer, tmp_path)
    finally:
        keyring.set_keyring(before)
    dialog = widget.pacs_flow.edit_servers()
    assert dialog.keyring_note.text() == SESSION_NOTE
    _fill(qtbot, dialog, "PACS", "https://pacs.example.org/dicom-web", "radiologist", "s3cret-Word")
    dialog.buttons.accepted.emit()
    widget.pacs_flow.shutdown()
    widget.qsettings.sync()
    assert "s3cret-Word" not in (tmp_path / "settings.ini").read_text()
    assert widget.pacs_servers.passwords.load("PACS") == "s3cret-Word"  # for this session
    fresh = ServerBook(QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    assert fresh.passwords.load("PACS") == "" and fresh.servers()[0].user == "radiologist"
    widget.shutdown()

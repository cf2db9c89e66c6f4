"""The PACS servers the user configured: kept in QSettings, their passwords in the system keyring.

A password is never written to QSettings or a log. Where the ``keyring`` package finds a usable backend (Windows
Credential Manager, macOS Keychain, the Secret Service of a Linux desktop) the password is stored there under the
service :data:`KEYRING_SERVICE` and the server's name; where none exists (a headless Linux, CI) it is kept in memory
for this session only, and the settings dialog says so. Keyring calls may wait on the system (an unlock prompt), so
the viewer makes them on worker threads: :meth:`PasswordStore.load` and :meth:`PasswordStore.save` never run on the
GUI thread.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject, QSettings, Signal

SETTINGS_GROUP = "pacs/servers"
KEYRING_SERVICE = "Tilewise PACS"
DEFAULT_AE_TITLE = "TILEWISE"


@dataclass(frozen=True)
class ServerSettings:
    """One configured PACS: what the settings dialog edits (never the password)."""

    name: str
    address: str
    """A DICOMweb root (https://HOST:PORT/dicom-web) or a DICOM service (AET@HOST:PORT)."""
    ae_title: str = DEFAULT_AE_TITLE
    """Tilewise's own AE title, for a DICOM service."""
    user: str = ""
    verify_tls: bool = True

    @property
    def is_dicom_service(self) -> bool:
        """True for a DIMSE (AET@HOST:PORT) address, False for DICOMweb."""
        text = self.address.strip().lower()
        return text.startswith("dicom://") or ("://" not in text and "@" in text)


def usable_keyring() -> Any:
    """The system keyring backend, or None when the ``keyring`` package or a usable backend is missing.

    The keyring package keeps exceptions from its first look at the backends, and with them the frames of whoever
    asked; asking from a short thread of our own keeps those frames (and the panel in them) out of its memory."""
    found: list[Any] = []
    probe = threading.Thread(target=lambda: found.append(_system_keyring()), name="tilewise-keyring-probe")
    probe.start()
    probe.join()
    return found[0] if found else None


def _system_keyring() -> Any:
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0:
        return None
    return backend


class PasswordStore:
    """Passwords by server name: in the system keyring when one is usable, and in memory for this session."""

    def __init__(self) -> None:
        self._session: dict[str, str] = {}
        self._lock = threading.Lock()
        self.backend = usable_keyring()

    @property
    def persistent(self) -> bool:
        """True when passwords outlive this session (a system keyring is usable)."""
        return self.backend is not None

    def remember(self, name: str, password: str) -> None:
        """Keep ``password`` for server ``name`` in memory at once (the keyring follows with :meth:`save`)."""
        with self._lock:
            if password:
                self._session[name] = password
            else:
                self._session.pop(name, None)

    def load_known(self, name: str) -> str:
        """The password of server ``name`` if this session already holds it, else '' (never asks the keyring)."""
        with self._lock:
            return self._session.get(name, "")

    def load(self, name: str) -> str:
        """The password of server ``name`` ('' when none); from memory, else the keyring (a worker thread's call)."""
        with self._lock:
            if name in self._session:
                return self._session[name]
        if self.backend is None:
            return ""
        try:
            found = self.backend.get_password(KEYRING_SERVICE, name) or ""
        except Exception:  # noqa: BLE001 (a locked or broken keyring: no password, the server says so)
            return ""
        self.remember(name, found)
        return found

    def save(self, changes: dict[str, tuple[str | None, str]], removed: list[str]) -> None:
        """Apply the settings dialog's edits (a worker thread's call): ``changes`` maps each server's name to (its
        former name or None, its new password or '' for unchanged); the passwords of ``removed`` servers are
        deleted. Keyring errors are ignored: memory still holds the passwords for this session."""
        for name, (former, password) in changes.items():
            if former and former != name:
                password = password or self.load(former)
                removed = [*removed, former]
            if password:
                self.remember(name, password)
                self._keyring("set_password", name, password)
        for name in removed:
            if name not in changes:
                self.remember(name, "")
                self._keyring("delete_password", name)

    def _keyring(self, call: str, *arguments: str) -> None:
        if self.backend is None:
            return
        try:
            getattr(self.backend, call)(KEYRING_SERVICE, *arguments)
        except Exception:  # noqa: BLE001 (a locked keyring, or nothing stored under that name)
            pass


class ServerBook(QObject):
    """The configured servers, in the order the user added them, kept in ``settings`` (no passwords)."""

    changed = Signal()

    def __init__(self, settings: QSettings, passwords: PasswordStore | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.passwords = passwords if passwords is not None else PasswordStore()

    def servers(self) -> list[ServerSettings]:
        """Every configured server."""
        found = []
        count = self.settings.beginReadArray(SETTINGS_GROUP)
        for index in range(count):
            self.settings.setArrayIndex(index)
            name = str(self.settings.value("name", "") or "")
            if name:
                found.append(ServerSettings(name, str(self.settings.value("address", "") or ""),
                                            str(self.settings.value("ae_title", DEFAULT_AE_TITLE) or ""),
                                            str(self.settings.value("user", "") or ""),
                                            str(self.settings.value("verify_tls", "true")).lower() != "false"))
        self.settings.endArray()
        return found

    def server(self, name: str) -> ServerSettings | None:
        """The server called ``name``, or None."""
        return next((server for server in self.servers() if server.name == name), None)

    def set_servers(self, servers: list[ServerSettings]) -> None:
        """Replace the configured servers (their passwords are kept by :attr:`passwords`)."""
        self.settings.remove(SETTINGS_GROUP)
        self.settings.beginWriteArray(SETTINGS_GROUP, len(servers))
        for index, server in enumerate(servers):
            self.settings.setArrayIndex(index)
            self.settings.setValue("name", server.name)
            self.settings.setValue("address", server.address.strip())
            self.settings.setValue("ae_title", server.ae_title.strip())
            self.settings.setValue("user", server.user.strip())
            self.settings.setValue("verify_tls", "true" if server.verify_tls else "false")
        self.settings.endArray()
        self.settings.sync()
        self.changed.emit()


def unique_name(servers: list[ServerSettings], wanted: str = "PACS") -> str:
    """``wanted``, or 'wanted 2', 'wanted 3', ... the first that no server in ``servers`` has."""
    names = {server.name for server in servers}
    if wanted not in names:
        return wanted
    return next(f"{wanted} {n}" for n in range(2, len(names) + 3) if f"{wanted} {n}" not in names)


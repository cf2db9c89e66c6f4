"""Where the user name and password for a PACS come from: never the command line.

In this order:

1. ``TILEWISE_PACS_USER`` and ``TILEWISE_PACS_PASSWORD`` (both set): for every server;
2. a netrc-style file, ``TILEWISE_NETRC`` when set, else ``~/.netrc``: the entry ``machine HOST:PORT`` or
   ``machine HOST`` (then ``default``), ``login USER password PASSWORD``;
3. none: the server is asked without credentials.

Passwords are never printed: errors about the file name the file and line, not its words.
"""
from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

USER_VARIABLE = "TILEWISE_PACS_USER"
PASSWORD_VARIABLE = "TILEWISE_PACS_PASSWORD"
NETRC_VARIABLE = "TILEWISE_NETRC"


@dataclass(frozen=True)
class Credentials:
    """A user name and password, and where they came from (for messages: never the password itself)."""

    user: str
    password: str
    source: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***', source={self.source!r})"


def netrc_path() -> Path:
    """The netrc-style file that is read: ``TILEWISE_NETRC``, else ``~/.netrc``."""
    named = os.environ.get(NETRC_VARIABLE)
    return Path(named).expanduser() if named else Path.home() / ".netrc"


def credentials_for(host: str, port: int | None = None) -> Credentials | None:
    """The credentials for the server at ``host`` (and ``port``), or None when none are configured.

    Raises :class:`InputError` when only one of the two variables is set, when ``TILEWISE_NETRC`` names a file that
    does not exist, or when the netrc file cannot be parsed (its name and line, never its contents)."""
    user, password = os.environ.get(USER_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if user is not None or password is not None:
        if not user or password is None:
            raise InputError(None, f"set both {USER_VARIABLE} and {PASSWORD_VARIABLE}, or neither")
        return Credentials(user, password, f"{USER_VARIABLE}/{PASSWORD_VARIABLE}")
    path = netrc_path()
    if not path.is_file():
        if os.environ.get(NETRC_VARIABLE):
            raise InputError(path, f"no such file ({NETRC_VARIABLE} names it)")
        return None
    try:
        entries = netrc.netrc(str(path))
    except netrc.NetrcParseError as error:
        where = f"line {error.lineno}" if error.lineno else "its contents"
        problem = "is readable by other users; make it private: chmod 600" if "access too permissive" in str(error) \
            else f"cannot be read as a netrc file ({where})"
        raise InputError(path, problem) from None
    except OSError as error:
        raise InputError(path, f"cannot be read ({error.strerror or error})") from None
    names = ([f"{host}:{port}"] if port is not None else []) + [host]
    name = next((n for n in names if n in entries.hosts), None)
    found = entries.hosts[name] if name is not None else entries.hosts.get("default")
    if found is None:
        return None
    login, _, secret = found
    return Credentials(login or "", secret or "", f"{path} (machine {name or 'default'})")

"""A PACS an application configured (the viewer's server settings): its address as a person types it, and a
connection with the credentials and AE title given, not those of the environment.

An address is a DICOMweb root (``http(s)://HOST:PORT/dicom-web``, also with the command line's ``dicomweb+``) or a
DICOM service (``AET@HOST:PORT``, also as ``dicom://AET@HOST:PORT``). Nothing is sent until the connection is used.
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from .common import PacsServer
from .credentials import Credentials
from .dicomweb import connect
from .dimse import connect_dimse
from .urls import DIMSE_SCHEME, is_dicomweb_url, is_dimse_url, parse_dicomweb_url, parse_dimse_url

SETTINGS_SOURCE = "the server settings"
"""How messages name credentials an application passed in."""
SETTINGS_HINT = "check the user name and password in the PACS server settings"


def server_address(text: str) -> str:
    """The command line's form of a server address a person typed: 'http://h:8042/dicom-web' ->
    'dicomweb+http://h:8042/dicom-web', 'ORTHANC@h:4242' -> 'dicom://ORTHANC@h:4242'. Raises :class:`InputError`
    with one line for an address that is neither, or that names more than a server (a study, a search)."""
    text = text.strip()
    lower = text.lower()
    if lower.startswith(("http://", "https://")):
        text = "dicomweb+" + text
    elif "://" not in text and "@" in text:
        text = f"{DIMSE_SCHEME}://{text}"
    if is_dimse_url(text):
        location: Any = parse_dimse_url(text)
    elif is_dicomweb_url(text):
        location = parse_dicomweb_url(text)
    else:
        raise InputError(text or None, "not a server address: give a DICOMweb address (https://HOST:PORT/dicom-web) "
                                       "or a DICOM service (AET@HOST:PORT)")
    if location.study_uid or location.search:
        raise InputError(text, "give the server alone, without a study, series or search")
    return text


def open_server(address: str, user: str = "", password: str = "", calling_aet: str = "",
                verify_tls: bool = True) -> PacsServer:
    """A connection to the server at ``address`` (see :func:`server_address`) with ``user`` and ``password`` (when
    ``user`` is empty: those of :mod:`.credentials`, as on the command line), Tilewise's AE title ``calling_aet``
    for DIMSE (default ``TILEWISE_AE_TITLE``), TLS certificates verified unless ``verify_tls`` is False.
    A refusal of the credentials or the AE title tells the user to check the server settings."""
    text = server_address(address)
    if is_dimse_url(text):
        server = connect_dimse(parse_dimse_url(text), calling_aet.strip() or None)
        server.title_hint = "(our AE title in the PACS server settings)"
        return server
    credentials = Credentials(user, password, SETTINGS_SOURCE) if user else None
    web = connect(parse_dicomweb_url(text), credentials=credentials, verify_tls=verify_tls)
    web.access_hint = SETTINGS_HINT
    return web

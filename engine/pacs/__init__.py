"""PACS connections (the optional ``pacs`` extra): DICOMweb and DIMSE addresses, credentials, searches (QIDO-RS,
C-FIND), pulls of series into case folders (WADO-RS, C-GET, C-MOVE) and the results stored back (STOW-RS, C-STORE);
for the viewer, study and series lists (:mod:`.browse`), configured servers (:mod:`.servers`) and a series pulled
all or nothing with progress and cancel (:mod:`.fetch`).

Nothing here runs a model: the command line pulls cases into a private temporary folder, runs them as any DICOM
folder, and stores the DICOM SEG or RTSTRUCT it wrote. Only the servers the user names are contacted.
"""
from __future__ import annotations

from .browse import SeriesInfo, StudyInfo, StudySearch, check_connection, list_series, list_studies
from .common import NON_IMAGE_MODALITIES, PacsAccessError, PacsError, PacsServer, Progress, SeriesRef
from .credentials import Credentials, credentials_for
from .dicomweb import (
    DicomWebServer,
    connect,
    find_series,
    find_studies,
    pull_series,
    require_pacs_extra,
    store,
)
from .dimse import DimseServer, connect_dimse
from .fetch import fetch_series
from .pull import RemoteCase, pull, remote_cases
from .servers import open_server, server_address
from .urls import (
    DicomWebLocation,
    DimseLocation,
    is_dicomweb_url,
    is_dimse_url,
    is_pacs_address,
    parse_dicomweb_url,
    parse_dimse_url,
    redacted,
)


def connect_address(text: str, warn: object = None) -> PacsServer:
    """A connection to the PACS a ``dicomweb+http(s)://`` or ``dicom://`` address names (nothing sent yet);
    ``warn(text)`` hears warnings (see :func:`connect`). Raises :class:`~tilewise.engine.errors.InputError` for
    anything else."""
    if is_dimse_url(text):
        return connect_dimse(parse_dimse_url(text))
    return connect(parse_dicomweb_url(text), warn)


__all__ = [
    "NON_IMAGE_MODALITIES", "Credentials", "DicomWebLocation", "DicomWebServer", "DimseLocation", "DimseServer",
    "PacsAccessError", "PacsError", "PacsServer", "Progress", "RemoteCase", "SeriesInfo", "SeriesRef", "StudyInfo",
    "StudySearch", "check_connection", "connect", "connect_address", "connect_dimse", "credentials_for",
    "fetch_series", "find_series", "find_studies", "is_dicomweb_url", "is_dimse_url", "is_pacs_address",
    "list_series", "list_studies", "open_server", "parse_dicomweb_url", "parse_dimse_url", "pull", "pull_series",
    "redacted", "remote_cases", "require_pacs_extra", "server_address", "store",
]

"""PACS connections (the optional ``pacs`` extra): DICOMweb addresses, credentials, QIDO-RS searches, WADO-RS pulls
of series into case folders and STOW-RS of results.

Nothing here runs a model: the command line pulls cases into a private temporary folder, runs them as any DICOM
folder, and stores the DICOM SEG or RTSTRUCT it wrote. Only the servers the user names are contacted.
"""
from __future__ import annotations

from .credentials import Credentials, credentials_for
from .dicomweb import (
    DicomWebServer,
    PacsAccessError,
    PacsError,
    SeriesRef,
    connect,
    find_series,
    find_studies,
    pull_series,
    require_pacs_extra,
    store,
)
from .pull import RemoteCase, pull, remote_cases
from .urls import DicomWebLocation, is_dicomweb_url, parse_dicomweb_url, redacted

__all__ = [
    "Credentials", "DicomWebLocation", "DicomWebServer", "PacsAccessError", "PacsError", "RemoteCase", "SeriesRef",
    "connect", "credentials_for", "find_series", "find_studies", "is_dicomweb_url", "parse_dicomweb_url", "pull",
    "pull_series", "redacted", "remote_cases", "require_pacs_extra", "store",
]

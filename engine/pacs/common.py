"""What every PACS connection shares: its errors, a series found on it, and the protocol the pull and the send use
(:class:`PacsServer`: DICOMweb in :mod:`.dicomweb`, DIMSE in :mod:`.dimse`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import TilewiseError
from ..events import CancelToken

NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG",
                                  "DOC", "AU", "ECG", "FID", "PLAN", "REGISTRATION", "OT_SR"})
"""Series modalities that hold no image volume to segment (skipped when a study or a search is pulled)."""


Progress = Callable[[int], None]
"""Hears the number of instances received so far, after each one is written."""


class PacsError(TilewiseError):
    """A PACS could not be reached, or answered with an error."""


class PacsAccessError(PacsError):
    """The PACS refused the credentials (HTTP 401), the access (403) or the association."""

    exit_code = 3


@dataclass(frozen=True)
class SeriesRef:
    """A series on the server: its study and series UIDs, modality and number of instances (0 when unknown)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    instances: int = 0


class PacsServer(Protocol):
    """A connection to one PACS, by DICOMweb or DIMSE."""

    @property
    def name(self) -> str:
        """The server as messages name it."""
        ...

    @property
    def location(self) -> Any:
        """Its parsed address (what ``-i`` or ``--send`` named)."""
        ...

    def find_series(self, study_uid: str | None = None, filters: dict[str, str] | None = None) -> list[SeriesRef]:
        """The series of ``study_uid`` (every study when None) that match ``filters``."""
        ...

    def find_studies(self, filters: dict[str, str] | None = None) -> list[str]:
        """The Study Instance UIDs of the studies that match ``filters``."""
        ...

    def pull_series(self, study_uid: str, series_uid: str, folder: Path, progress: Progress | None = None,
                    cancel: CancelToken | None = None) -> tuple[int, int]:
        """Every instance of the series into ``folder``; (instances, bytes). ``progress(instances)`` after each one;
        ``cancel`` stops it (:class:`~tilewise.engine.errors.Cancelled`)."""
        ...

    def store(self, path: Path) -> tuple[str, str, str]:
        """Store the DICOM file at ``path``; its (study, series, SOP instance) UIDs."""
        ...

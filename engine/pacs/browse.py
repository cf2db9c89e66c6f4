"""What a person browsing a PACS sees: studies (patient, date, modalities, description, how many series and images)
and a study's series (modality, description, number of images), by QIDO-RS or C-FIND; and whether a server answers.

A search takes a patient's name or ID (one text: both are asked, the studies of either are listed), a date range
and a modality. Names and IDs match anywhere in them, the words of a name in their order ('smith' finds
'SMITH^JOHN' and 'DOE^JANE SMITH'), case-insensitively where the server does so (Orthanc does).
The answers hold patient names for the screen only: nothing here logs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import PacsServer
from .dicomweb import TIMEOUT_S, DicomWebServer, _qido, answered
from .dimse import DimseServer, _query

STUDY_FIELDS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "StudyDescription", "ModalitiesInStudy",
                "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "AccessionNumber")
SERIES_FIELDS = ("Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")
MAX_STUDIES = 500
"""The most studies a search lists (the newest first); a narrower search finds the rest."""


@dataclass(frozen=True)
class StudyInfo:
    """One study as a study list shows it."""

    study_uid: str
    patient_name: str
    patient_id: str
    date: str
    """YYYYMMDD as DICOM holds it ('' when the PACS has none)."""
    description: str
    modalities: str
    """The modalities of its series, 'CT\\SEG' as DICOM lists them."""
    series: int
    instances: int


@dataclass(frozen=True)
class SeriesInfo:
    """One series as a series list shows it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    instances: int


@dataclass(frozen=True)
class StudySearch:
    """What to look for: a patient's name or ID, a date range (YYYYMMDD, either end open) and a modality."""

    patient: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""

    def queries(self) -> list[dict[str, str]]:
        """The searches to send (a name and an ID search when a patient is given: a server can do only AND)."""
        common: dict[str, str] = {}
        if self.date_from or self.date_to:
            common["StudyDate"] = f"{self.date_from}-{self.date_to}" if self.date_from != self.date_to \
                else self.date_from
        if self.modality:
            common["ModalitiesInStudy"] = self.modality.upper()
        patient = self.patient.strip().replace("*", "")
        if not patient:
            return [common]
        name = "*" + "*".join(patient.replace(",", " ").replace("^", " ").split()) + "*"
        return [{**common, "PatientName": name}, {**common, "PatientID": f"*{patient}*"}]


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword, "")
    if value is None:
        return ""
    if keyword == "PatientName" or type(value).__name__ == "PersonName":
        return str(value).replace("^", " ").strip()
    if hasattr(value, "__iter__") and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _number(dataset: Any, keyword: str) -> int:
    try:
        return int(dataset.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return 0


def _study(dataset: Any) -> StudyInfo:
    return StudyInfo(str(dataset.get("StudyInstanceUID", "")), _text(dataset, "PatientName"),
                     _text(dataset, "PatientID"), _text(dataset, "StudyDate"), _text(dataset, "StudyDescription"),
                     _text(dataset, "ModalitiesInStudy"), _number(dataset, "NumberOfStudyRelatedSeries"),
                     _number(dataset, "NumberOfStudyRelatedInstances"))


def _series(study_uid: str, dataset: Any) -> SeriesInfo:
    number = dataset.get("SeriesNumber", None)
    return SeriesInfo(study_uid, str(dataset.get("SeriesInstanceUID", "")), _text(dataset, "Modality"),
                      _text(dataset, "SeriesDescription"), int(number) if number not in (None, "") else None,
                      _number(dataset, "NumberOfSeriesRelatedInstances"))


def _datasets(server: PacsServer, level: str, keys: dict[str, str], fields: tuple[str, ...], path: str,
              what: str) -> list[Any]:
    """The matches of a search at ``level`` ('STUDY', 'SERIES') with ``keys``, each with ``fields``."""
    import pydicom

    if isinstance(server, DicomWebServer):
        query = {**keys, "includefield": ",".join(fields)}
        return [pydicom.Dataset.from_json(item) for item in _qido(server, path, query, what)]
    if isinstance(server, DimseServer):
        return server.find_matches(_query(level, {**{field: "" for field in fields}, **keys}), what)
    raise TypeError(f"not a PACS connection: {type(server).__name__}")


def list_studies(server: PacsServer, search: StudySearch | None = None) -> list[StudyInfo]:
    """The studies that match ``search`` (every study when None), the newest first, at most :data:`MAX_STUDIES`.
    Raises :class:`~.common.PacsError` with one line when the server cannot be asked."""
    found: dict[str, StudyInfo] = {}
    for keys in (search or StudySearch()).queries():
        for dataset in _datasets(server, "STUDY", {**keys, "StudyInstanceUID": ""}, STUDY_FIELDS, "studies",
                                 "searching studies"):
            study = _study(dataset)
            if study.study_uid:
                found.setdefault(study.study_uid, study)
    return sorted(found.values(), key=lambda study: study.date, reverse=True)[:MAX_STUDIES]


def list_series(server: PacsServer, study_uid: str) -> list[SeriesInfo]:
    """The series of study ``study_uid``, by series number. Raises :class:`~.common.PacsError` with one line."""
    keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": ""}
    datasets = _datasets(server, "SERIES", keys, SERIES_FIELDS, f"studies/{study_uid}/series",
                         f"searching series of study {study_uid}")
    series = [_series(study_uid, dataset) for dataset in datasets]
    return sorted((s for s in series if s.series_uid), key=lambda s: (s.number is None, s.number or 0))


def check_connection(server: PacsServer) -> str:
    """Ask ``server`` something harmless (C-ECHO, or a QIDO-RS search for one study); a plain line saying it
    answered. Raises :class:`~.common.PacsError` with one line when it does not, or refuses the credentials."""
    if isinstance(server, DimseServer):
        server.echo()
        return f"{server.name} answered (C-ECHO)."
    if isinstance(server, DicomWebServer):
        with answered(server, "a search for one study"):
            answer = server.session.get(f"{server.location.root}/studies?limit=1",
                                        headers={"Accept": "application/dicom+json"}, timeout=TIMEOUT_S)
            answer.raise_for_status()
        return f"{server.name} answered (DICOMweb search)."
    raise TypeError(f"not a PACS connection: {type(server).__name__}")

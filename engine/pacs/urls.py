"""PACS addresses on the command line.

DICOMweb: ``dicomweb+http(s)://HOST[:PORT]/PATH`` where PATH is the server's DICOMweb root (``/dicom-web``)
followed by what to read. DIMSE: ``dicom://AET@HOST:PORT/...`` (the PACS' AE title, host and DICOM port) followed
by the same:

- ``.../studies/STUDY/series/SERIES``: one series;
- ``.../studies/STUDY``: one study (its image series; the largest is segmented, as for a DICOM folder);
- ``.../series?Modality=CT&StudyDate=20260101-20261231&SeriesDescription=*chest*``: a QIDO-RS search for series
  (also ``.../studies/STUDY/series?...``), one case per series found;
- ``.../studies?ModalitiesInStudy=CT&StudyDate=...``: a QIDO-RS search for studies, one case per study;
- the root alone (``--send``): where results are stored (STOW-RS, or C-STORE).

User names and passwords never belong in a DICOMweb address (shell history, process lists and logs keep it): an
address with them is refused, and :func:`redacted` shows an address without them. (In a ``dicom://`` address the
part before '@' is the PACS' AE title, which is no secret.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..errors import InputError

SCHEMES: tuple[str, ...] = ("dicomweb+http", "dicomweb+https")
DIMSE_SCHEME = "dicom"
CREDENTIALS_HINT = ("put them in ~/.netrc (machine HOST login USER password PASSWORD), in the file TILEWISE_NETRC "
                    "names, or in TILEWISE_PACS_USER and TILEWISE_PACS_PASSWORD")


@dataclass(frozen=True)
class DicomWebLocation:
    """A parsed DICOMweb address: the server's DICOMweb root and what it names there."""

    root: str
    """The DICOMweb root as an http(s) URL, e.g. 'http://127.0.0.1:8042/dicom-web'."""
    study_uid: str | None = None
    series_uid: str | None = None
    search: str | None = None
    """'series' or 'studies' for a QIDO-RS search (with ``filters``), else None."""
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """The server's host name (for credentials and messages)."""
        return urlsplit(self.root).hostname or ""

    @property
    def port(self) -> int | None:
        """The server's port when the address names one."""
        return urlsplit(self.root).port

    @property
    def secure(self) -> bool:
        """True for https."""
        return self.root.startswith("https://")

    def describe(self) -> str:
        """The address as the user wrote it, for messages (never credentials: an address has none)."""
        return _with_path("dicomweb+" + self.root, self.study_uid, self.series_uid, self.search, self.filters)


def _with_path(service: str, study_uid: str | None, series_uid: str | None, search: str | None,
               filters: dict[str, str]) -> str:
    """``service`` followed by what an address names there (a study, a series, or a search and its filters)."""
    text = service
    if study_uid:
        text += f"/studies/{study_uid}"
    if series_uid:
        text += f"/series/{series_uid}"
    elif search:
        text += f"/{search}"
    if filters:
        text += "?" + "&".join(f"{key}={value}" for key, value in filters.items())
    return text


def is_dicomweb_url(text: object) -> bool:
    """True when ``text`` is a ``dicomweb+http(s)://`` address."""
    return isinstance(text, str) and text.lower().startswith(tuple(s + "://" for s in SCHEMES))


def is_dimse_url(text: object) -> bool:
    """True when ``text`` is a ``dicom://`` (DIMSE) address."""
    return isinstance(text, str) and text.lower().startswith(DIMSE_SCHEME + "://")


def is_pacs_address(text: object) -> bool:
    """True for a DICOMweb or DIMSE address."""
    return is_dicomweb_url(text) or is_dimse_url(text)


@dataclass(frozen=True)
class DimseLocation:
    """A parsed ``dicom://AET@HOST:PORT/...`` address: the PACS' DICOM service and what it names there."""

    called_aet: str
    host: str
    port: int
    study_uid: str | None = None
    series_uid: str | None = None
    search: str | None = None
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        """The service as messages name it: 'ORTHANC@127.0.0.1:4242'."""
        return f"{self.called_aet}@{self.host}:{self.port}"

    def describe(self) -> str:
        """The address as the user wrote it, for messages."""
        return _with_path(f"{DIMSE_SCHEME}://{self.root}", self.study_uid, self.series_uid, self.search, self.filters)


def parse_dimse_url(text: str) -> DimseLocation:
    """Parse a ``dicom://AET@HOST:PORT[/studies/UID[/series/UID] | /series?QUERY | /studies?QUERY]`` address;
    raises :class:`InputError` with one line for anything else."""
    parts = urlsplit(text)
    if parts.scheme.lower() != DIMSE_SCHEME or "@" not in parts.netloc or parts.password is not None:
        raise InputError(text, "not a DIMSE address (dicom://AET@HOST:PORT/studies/UID/series/UID)")
    aet = parts.netloc.rsplit("@", 1)[0]
    if not aet or len(aet) > 16 or "\\" in aet:
        raise InputError(text, "the PACS' AE title (before '@') must be 1 to 16 characters")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise InputError(text, "the address needs the PACS' host and DICOM port: dicom://AET@HOST:PORT")
    segments = [s for s in parts.path.split("/") if s]
    study, series, search = _resource(segments, text)
    filters = dict(parse_qsl(parts.query, keep_blank_values=False))
    if filters and search is None:
        raise InputError(text, "a query (?...) needs a search: .../series?Modality=CT or .../studies?...")
    return DimseLocation(aet, parts.hostname, port, study, series, search, filters)


def _resource(rest: list[str], text: str) -> tuple[str | None, str | None, str | None]:
    """(study UID, series UID, search) of an address' path after its root."""
    study = series = search = None
    if rest[:1] == ["studies"] and len(rest) >= 2:
        study = rest[1]
        if rest[2:3] == ["series"]:
            if len(rest) == 4:
                series = rest[3]
            elif len(rest) == 3:
                search = "series"
            else:
                raise InputError(text, "expected .../studies/UID/series/UID")
        elif len(rest) != 2:
            raise InputError(text, "expected .../studies/UID or .../studies/UID/series/UID")
    elif rest in (["studies"], ["series"]):
        search = rest[0]
    elif rest:
        raise InputError(text, "expected the root followed by /studies/UID[/series/UID], /series?QUERY or "
                               "/studies?QUERY")
    return study, series, search


def redacted(text: str) -> str:
    """``text`` with any user name and password taken out of its network location."""
    parts = urlsplit(text)
    if "@" not in parts.netloc:
        return text
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def parse_dicomweb_url(text: str) -> DicomWebLocation:
    """Parse a ``dicomweb+http(s)://`` address (see the module's docstring); raises :class:`InputError` with one
    line for anything else, and for an address that holds a user name or password."""
    if not is_dicomweb_url(text):
        raise InputError(redacted(text), "not a DICOMweb address (dicomweb+http://HOST:PORT/dicom-web/studies/UID/"
                                         "series/UID)")
    parts = urlsplit(text.split("+", 1)[1])
    if parts.username is not None or parts.password is not None:
        raise InputError(redacted(text), f"credentials do not belong in the address; {CREDENTIALS_HINT}")
    if not parts.hostname:
        raise InputError(text, "the address names no server")
    try:
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        raise InputError(text, "the address' port is not a number") from None
    segments = [s for s in parts.path.split("/") if s]
    start = next((i for i, s in enumerate(segments) if s in ("studies", "series")), len(segments))
    root = urlunsplit((parts.scheme, parts.netloc, "/".join(["", *segments[:start]]), "", "")).rstrip("/")
    filters = dict(parse_qsl(parts.query, keep_blank_values=False))
    study, series, search = _resource(segments[start:], text)
    if filters and search is None:
        raise InputError(text, "a query (?...) needs a search: .../series?Modality=CT or .../studies?...")
    return DicomWebLocation(root, study, series, search, filters)

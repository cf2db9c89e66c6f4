"""A DICOMweb server (dicomweb-client): QIDO-RS searches, WADO-RS series to a folder, STOW-RS of results.

Every request goes to the one server the user named, with the credentials of :mod:`.credentials`, TLS certificates
verified (requests' default; ``REQUESTS_CA_BUNDLE`` names a private CA's certificates), a 20 s connection and read
timeout, and 3 tries over 1.5 s of a request that failed to connect or got a busy answer (429, 503, 504). Failures
are one line (:class:`PacsError`, exit 2; :class:`PacsAccessError`, exit 3, when the server refuses the
credentials); a series is named by its UID, never by the patient's name.

Memory: a pulled series is written instance by instance as it streams in (one instance in memory at a time).
"""
from __future__ import annotations

import importlib.util
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Cancelled, TilewiseError, output_error
from ..events import CancelToken
from .common import PacsAccessError, PacsError, Progress, SeriesRef
from .credentials import Credentials, credentials_for
from .urls import CREDENTIALS_HINT, DicomWebLocation

INSTALL_HINT = 'pip install "tilewise[pacs]"'
TIMEOUT_S = 20.0
def require_pacs_extra() -> None:
    """Raise a one-line :class:`TilewiseError` naming the install command when dicomweb-client is missing."""
    if importlib.util.find_spec("dicomweb_client") is None:
        raise TilewiseError(None, f"DICOMweb needs the PACS extra (dicomweb_client is not installed); install it "
                                  f"with: {INSTALL_HINT}")


def _no_credentials(request: Any) -> Any:
    """A requests auth that sends nothing."""
    return request


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class DicomWebServer:
    """One DICOMweb server: the dicomweb-client and what the messages name it by."""

    location: DicomWebLocation
    client: Any
    credentials: Credentials | None
    session: Any = None
    """The requests session the client uses (QIDO-RS searches go through it directly, see :func:`_qido`)."""
    access_hint: str = CREDENTIALS_HINT
    """What a refusal of the credentials tells the user to do (where the credentials are set)."""

    @property
    def name(self) -> str:
        """The server as messages name it: its DICOMweb root."""
        return self.location.root

    def find_series(self, study_uid: str | None = None, filters: dict[str, str] | None = None) -> list[SeriesRef]:
        """QIDO-RS, see :func:`find_series`."""
        return find_series(self, study_uid, filters)

    def find_studies(self, filters: dict[str, str] | None = None) -> list[str]:
        """QIDO-RS, see :func:`find_studies`."""
        return find_studies(self, filters)

    def pull_series(self, study_uid: str, series_uid: str, folder: Path, progress: Progress | None = None,
                    cancel: CancelToken | None = None) -> tuple[int, int]:
        """WADO-RS, see :func:`pull_series`."""
        return pull_series(self, study_uid, series_uid, folder, progress, cancel)

    def store(self, path: Path) -> tuple[str, str, str]:
        """STOW-RS, see :func:`store`."""
        return store(self, path)


def connect(location: DicomWebLocation, warn: Any = None, credentials: Credentials | None = None,
            verify_tls: bool = True) -> DicomWebServer:
    """A client for ``location``'s server with ``credentials`` (default: those of :mod:`.credentials`); nothing is
    sent yet. ``warn(text)`` hears that credentials would travel unencrypted (http to another computer).
    ``verify_tls=False`` accepts any TLS certificate (a test server's own; never the default)."""
    require_pacs_extra()
    import requests
    from dicomweb_client import DICOMwebClient

    credentials = credentials if credentials is not None else credentials_for(location.host, location.port)
    session = requests.Session()  # the environment's proxy and REQUESTS_CA_BUNDLE apply; verify=True stays
    session.verify = verify_tls
    # no credentials: an auth that adds nothing, so that requests does not look in ~/.netrc itself
    session.auth = (credentials.user, credentials.password) if credentials is not None else _no_credentials
    if credentials is not None and not location.secure and not _is_loopback(location.host) and warn is not None:
        warn(f"{location.root}: the password is sent unencrypted (http); use https")
    client = DICOMwebClient(location.root, session=session, timeout=TIMEOUT_S)
    # dicomweb-client retries busy answers and every connection error 5 times over 30 s; 3 tries over 1.5 s ride
    # out a blip without leaving the user waiting on a server that is down or a certificate that is not trusted
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)
    return DicomWebServer(location, client, credentials, session)


@contextmanager
def answered(server: DicomWebServer, what: str) -> Iterator[None]:
    """Turn the failures of a request to ``server`` about ``what`` into one-line :class:`PacsError` s."""
    import requests

    try:
        yield
    except requests.exceptions.SSLError as error:
        raise PacsError(server.name, f"the TLS certificate could not be verified ({_reason(error)}); give the "
                                     "server's CA certificates with REQUESTS_CA_BUNDLE=/path/ca.pem") from None
    except requests.exceptions.ConnectionError as error:
        raise PacsError(server.name, f"cannot connect ({_reason(error)}); is the server running and the address "
                                     "right?") from None
    except requests.exceptions.Timeout:
        raise PacsError(server.name, f"no answer within {TIMEOUT_S:.0f} s to {what}") from None
    except requests.exceptions.HTTPError as error:
        raise _http_error(server, error.response, what) from None
    except requests.exceptions.RequestException as error:
        raise PacsError(server.name, f"{what} failed: {_reason(error)}") from None
    except ValueError as error:  # dicomweb-client: an answer that is not DICOM
        raise PacsError(server.name, f"{what}: the answer is not DICOM ({str(error)[:120]})") from None


def _reason(error: Exception) -> str:
    """The innermost reason of a requests error, on one line without the URL's query."""
    inner: BaseException = error
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    text = str(inner.args[0] if getattr(inner, "args", None) else inner)
    return " ".join(text.split())[:160] or type(inner).__name__


def _http_error(server: DicomWebServer, response: Any, what: str) -> PacsError:
    status = getattr(response, "status_code", 0)
    if status == 401:
        how = f"the credentials from {server.credentials.source}" if server.credentials else "no credentials"
        return PacsAccessError(server.name, f"the server refused {how} (HTTP 401); {server.access_hint}")
    if status == 403:
        return PacsAccessError(server.name, f"the server does not allow {what} to this user (HTTP 403)")
    if status == 404:
        return PacsError(server.name, f"{what}: not found on the server (HTTP 404); check the UIDs and the "
                                      "DICOMweb root in the address")
    reason = getattr(response, "reason", "") or ""
    return PacsError(server.name, f"{what}: the server answered HTTP {status} {reason}".rstrip())


def _series_ref(item: dict) -> SeriesRef:
    import pydicom

    dataset = pydicom.Dataset.from_json(item)
    return SeriesRef(str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SeriesInstanceUID", "")),
                     str(dataset.get("Modality", "") or ""), int(dataset.get("NumberOfSeriesRelatedInstances", 0) or 0))


_QUERY_SAFE = "*?,-._:"
"""Characters a QIDO-RS query value keeps as they are: wildcards ('*chest*': Orthanc 1.10 does not match '%2A',
which dicomweb-client and requests send), value lists and ranges."""
_MAX_RESULTS = 100_000


def _qido(server: DicomWebServer, path: str, filters: dict[str, str], what: str) -> list[dict]:
    """The QIDO-RS answer items for ``path`` ('series', 'studies/UID/series', 'studies') and ``filters``, page by
    page (``offset``) until the server has no more."""
    from urllib.parse import quote

    query = "".join(f"{quote(str(key), safe='')}={quote(str(value), safe=_QUERY_SAFE)}&"
                    for key, value in filters.items())
    found: list[dict] = []
    while len(found) < _MAX_RESULTS:
        with answered(server, what):
            response = server.session.get(f"{server.location.root}/{path}?{query}offset={len(found)}",
                                          headers={"Accept": "application/dicom+json"}, timeout=TIMEOUT_S)
            response.raise_for_status()
            page = response.json() if response.status_code != 204 and response.content else []
        if not isinstance(page, list) or not page or page[0] in found:  # the end (or a server that ignores offset)
            break
        found.extend(page)
    return found


def find_series(server: DicomWebServer, study_uid: str | None = None,
                filters: dict[str, str] | None = None) -> list[SeriesRef]:
    """QIDO-RS: the series of ``study_uid`` (every study when None) that match ``filters`` (DICOM keywords or tags:
    ``Modality=CT``, ``StudyDate=20260101-20261231``, ``SeriesDescription=*chest*``), in the server's order."""
    what = f"searching series of study {study_uid}" if study_uid else "searching series"
    path = f"studies/{study_uid}/series" if study_uid else "series"
    return [ref for ref in map(_series_ref, _qido(server, path, dict(filters or {}), what)) if ref.series_uid]


def find_studies(server: DicomWebServer, filters: dict[str, str] | None = None) -> list[str]:
    """QIDO-RS: the Study Instance UIDs of the studies that match ``filters``, in the server's order."""
    import pydicom

    found = _qido(server, "studies", dict(filters or {}), "searching studies")
    uids = [str(pydicom.Dataset.from_json(item).get("StudyInstanceUID", "")) for item in found]
    return [uid for uid in uids if uid]


def pull_series(server: DicomWebServer, study_uid: str, series_uid: str, folder: Path,
                progress: Progress | None = None, cancel: CancelToken | None = None) -> tuple[int, int]:
    """WADO-RS: every instance of the series into ``folder`` (created), in the transfer syntax the server holds
    it in, one file per instance; returns (instances, bytes). ``progress(instances)`` hears each instance written;
    ``cancel`` stops the pull before the next instance (:class:`Cancelled`; what was written stays, see
    :func:`~.fetch.fetch_series` for all or nothing). Raises :class:`PacsError` (exit 3 for a full disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    count = size = 0
    with answered(server, f"retrieving series {series_uid}"):
        for dataset in server.client.iter_series(study_uid, series_uid, media_types=(("application/dicom", "*"),)):
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"retrieving series {series_uid} was cancelled")
            count += 1
            path = folder / f"{count:05d}.dcm"
            try:
                dataset.save_as(path, enforce_file_format=True)
            except OSError as error:
                raise output_error(error, path) from None
            size += path.stat().st_size
            if progress is not None:
                progress(count)
    if count == 0:
        raise PacsError(server.name, f"series {series_uid} has no instances")
    return count, size


def store(server: DicomWebServer, path: Path) -> tuple[str, str, str]:
    """STOW-RS: store the DICOM file at ``path`` on the server; returns its (study, series, SOP instance) UIDs.

    Raises :class:`PacsError` when the server refuses it (its failure reason) or cannot be reached."""
    import pydicom

    dataset = pydicom.dcmread(path)
    uids = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
    with answered(server, f"storing {dataset.get('Modality', 'object')} {uids[2]}"):
        answer = server.client.store_instances([dataset])
    failed = list(getattr(answer, "FailedSOPSequence", []) or [])
    if failed:
        reason = failed[0].get("FailureReason", "unknown")
        raise PacsError(server.name, f"the server did not store {uids[2]} (failure reason {reason})")
    return uids

"""A PACS by DIMSE (pynetdicom): C-FIND searches, series retrieved by C-GET or C-MOVE into a folder, C-STORE of
results.

Tilewise's own AE title is ``TILEWISE_AE_TITLE`` (default ``TILEWISE``). A series is retrieved with C-GET (the
images come back on the association Tilewise opened: nothing listens) unless ``TILEWISE_AE_PORT`` is set: then with
C-MOVE to Tilewise's AE title, the PACS sending the images to a storage service Tilewise runs on that port for the
move only (the PACS must know the AE title at this computer and port). Searches run study by study (C-FIND at STUDY
level with the study attributes of the search, then SERIES level in each study with the others), as every PACS
answers them. Failures are one line (:class:`~.common.PacsError`; a refused association exits 3); pynetdicom's own
log stays silent (its NullHandler); series are named by UID.

Memory: received instances are written as they arrive, one at a time, in the encoding the PACS sent.
"""
from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Cancelled, InputError, TilewiseError, output_error
from ..events import CancelToken
from .common import PacsAccessError, PacsError, Progress, SeriesRef
from .urls import DimseLocation

AE_TITLE_VARIABLE = "TILEWISE_AE_TITLE"
AE_PORT_VARIABLE = "TILEWISE_AE_PORT"
TIMEOUT_S = 30.0
INSTALL_HINT = 'pip install "tilewise[pacs]"'
STUDY_KEYS = frozenset({"StudyDate", "StudyTime", "AccessionNumber", "PatientID", "PatientName", "PatientBirthDate",
                        "PatientSex", "StudyDescription", "ModalitiesInStudy", "StudyID", "ReferringPhysicianName",
                        "StudyInstanceUID"})
"""Search keys of the STUDY level; every other key is asked at SERIES level."""
_FAILED = {0xA701: "out of resources", 0xA702: "out of resources", 0xA801: "move destination unknown (the PACS does "
           "not know Tilewise's AE title and port)", 0xA900: "the query does not match the SOP class",
           0xC000: "unable to process", 0xFE00: "cancelled", 0x0122: "SOP class not supported"}


def require_dimse() -> None:
    """Raise a one-line :class:`TilewiseError` naming the install command when pynetdicom is missing."""
    if importlib.util.find_spec("pynetdicom") is None:
        raise TilewiseError(None, f"DIMSE (dicom://) needs the PACS extra (pynetdicom is not installed); install it "
                                  f"with: {INSTALL_HINT}")


def calling_ae_title() -> str:
    """Tilewise's AE title: ``TILEWISE_AE_TITLE`` or 'TILEWISE'; raises :class:`InputError` for an invalid one."""
    title = os.environ.get(AE_TITLE_VARIABLE, "TILEWISE").strip()
    if not title or len(title) > 16 or "\\" in title:
        raise InputError(None, f"{AE_TITLE_VARIABLE} must be 1 to 16 characters")
    return title


def move_port() -> int | None:
    """The port of Tilewise's AE title for C-MOVE (``TILEWISE_AE_PORT``), or None (retrieve by C-GET)."""
    text = os.environ.get(AE_PORT_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InputError(None, f"{AE_PORT_VARIABLE} must be a port number (1 to 65535), not '{text}'")
    return int(text)


def _status(value: int) -> str:
    return f"status 0x{value:04X}" + (f": {_FAILED[value]}" if value in _FAILED else "")


@dataclass
class DimseServer:
    """One PACS' DICOM service, with Tilewise's AE title and, for C-MOVE, the port the PACS sends to."""

    location: DimseLocation
    calling_aet: str
    port_for_move: int | None = None
    title_hint: str = f"({AE_TITLE_VARIABLE})"
    """Where Tilewise's AE title is set, for the message of a refused association."""

    @property
    def name(self) -> str:
        """The service as messages name it: 'ORTHANC@host:4242'."""
        return self.location.root

    @contextmanager
    def association(self, contexts: list[Any], what: str, **options: Any) -> Iterator[Any]:
        """An association with the PACS proposing ``contexts`` (abstract syntaxes, or (syntax, transfer syntaxes));
        released afterwards. Raises :class:`PacsError` when it cannot be established."""
        from pynetdicom import AE

        entity = AE(ae_title=self.calling_aet)
        entity.acse_timeout = entity.dimse_timeout = entity.network_timeout = TIMEOUT_S
        for context in contexts:
            syntax, transfer = context if isinstance(context, tuple) else (context, None)
            entity.add_requested_context(syntax, *([transfer] if transfer else []))
        peer = self.location
        try:  # a refused connection first: pynetdicom would log it and leave its socket open
            socket.create_connection((peer.host, peer.port), timeout=TIMEOUT_S).close()
        except OSError as error:
            raise PacsError(self.name, f"cannot connect ({error.strerror or error}) for {what}; is the PACS running "
                                       "and the address right?") from None
        link = entity.associate(peer.host, peer.port, ae_title=peer.called_aet, **options)
        if not link.is_established:
            if link.is_rejected:
                raise PacsAccessError(self.name, f"the PACS refused the association for {what} (called AE title "
                                                 f"{peer.called_aet}, calling {self.calling_aet}): does it know "
                                                 f"Tilewise's AE title? {self.title_hint}")
            raise PacsError(self.name, f"the PACS aborted the association for {what}; is the address right?")
        try:
            yield link
        finally:
            if link.is_established:
                link.release()

    def echo(self) -> None:
        """C-ECHO: raises :class:`PacsError` when the PACS does not answer it with success."""
        from pynetdicom.sop_class import Verification

        with self.association([Verification], "a C-ECHO") as link:
            status = link.send_c_echo()
        code = int(getattr(status, "Status", 0xC000)) if status else 0xC000
        if code != 0x0000:
            raise PacsError(self.name, f"the PACS did not answer the C-ECHO ({_status(code)})")

    def find_matches(self, query: Any, what: str) -> list[Any]:
        """C-FIND with the identifier ``query`` (see :func:`_query`): the matching identifiers, as the PACS sent
        them. Raises :class:`PacsError` with one line."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        found = []
        with self.association([Find], what) as link:
            for status, identifier in link.send_c_find(query, Find):
                code = int(getattr(status, "Status", 0xC000)) if status else 0xC000
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    found.append(identifier)
                elif code != 0x0000:
                    raise PacsError(self.name, f"{what} failed ({_status(code)})")
        return found

    def find_studies(self, filters: dict[str, str] | None = None) -> list[str]:
        """C-FIND at STUDY level: the Study Instance UIDs that match ``filters`` (DICOM keywords)."""
        query = _query("STUDY", {"StudyInstanceUID": "", **(filters or {})})
        return [str(item.StudyInstanceUID) for item in self.find_matches(query, "searching studies")
                if item.get("StudyInstanceUID")]

    def find_series(self, study_uid: str | None = None, filters: dict[str, str] | None = None) -> list[SeriesRef]:
        """C-FIND: the series of ``study_uid`` (every study the study keys of ``filters`` match, when None) that
        match the series keys of ``filters``."""
        filters = dict(filters or {})
        study_filters = {key: value for key, value in filters.items() if key in STUDY_KEYS}
        series_filters = {key: value for key, value in filters.items() if key not in STUDY_KEYS}
        studies = [study_uid] if study_uid else self.find_studies(study_filters)
        found = []
        for uid in studies:
            query = _query("SERIES", {"SeriesInstanceUID": "", "Modality": "", "NumberOfSeriesRelatedInstances": "",
                                      **series_filters, "StudyInstanceUID": uid})
            for item in self.find_matches(query, f"searching series of study {uid}"):
                if item.get("SeriesInstanceUID"):
                    found.append(SeriesRef(uid, str(item.SeriesInstanceUID), str(item.get("Modality", "") or ""),
                                           int(item.get("NumberOfSeriesRelatedInstances", 0) or 0)))
        return found

    def pull_series(self, study_uid: str, series_uid: str, folder: Path, progress: Progress | None = None,
                    cancel: CancelToken | None = None) -> tuple[int, int]:
        """C-GET (or C-MOVE with ``TILEWISE_AE_PORT``): every instance of the series into ``folder`` (created), one
        file per instance; (instances, bytes). ``progress(instances)`` hears each instance written; ``cancel``
        aborts the association at the PACS' next answer (:class:`Cancelled`; what was written stays)."""
        from pynetdicom import StoragePresentationContexts, build_role, evt

        folder.mkdir(parents=True, exist_ok=True)
        written = [0, 0]

        def on_store(event: Any) -> int:
            if str(event.dataset.get("SeriesInstanceUID", "")) != series_uid:
                return 0xA900  # not of the series asked for (a stray store while the C-MOVE port is open): refused
            path = folder / f"{written[0] + 1:05d}.dcm"
            try:
                data = event.encoded_dataset()
                path.write_bytes(data)
            except OSError as error:
                self._write_error = output_error(error, path)
                return 0xA700  # out of resources: the PACS stops the retrieval
            written[0] += 1
            written[1] += len(data)
            if progress is not None:
                progress(written[0])
            return 0x0000

        self._write_error: TilewiseError | None = None
        query = _query("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid})
        what = f"retrieving series {series_uid}"
        handlers = [(evt.EVT_C_STORE, on_store)]
        storage = [context.abstract_syntax for context in StoragePresentationContexts]
        if self.port_for_move is None:
            from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get

            roles = [build_role(syntax, scp_role=True) for syntax in storage[:127]]
            with self.association([Get, *storage[:127]], what, ext_neg=roles, evt_handlers=handlers) as link:
                final = _last_status(link.send_c_get(query, Get), link, cancel, what)
        else:
            final = self._move(query, storage, handlers, what, cancel)
        if self._write_error is not None:
            raise self._write_error
        if final not in (0x0000, None) or written[0] == 0:
            try:
                known = any(ref.series_uid == series_uid for ref in self.find_series(study_uid))
            except PacsError:  # no answer to a search either: the retrieval's own problem is the news
                known = True
            if not known:
                raise PacsError(self.name, f"{what}: not found on the PACS; check the study and series UIDs")
            if final not in (0x0000, None):
                raise PacsError(self.name, f"{what} failed ({_status(final)})")
            how = "retrieve (C-GET)" if self.port_for_move is None else \
                f"move to it (C-MOVE, port {self.port_for_move})"
            raise PacsError(self.name, f"{what}: the PACS sent no instance; does it let AE title {self.calling_aet} "
                                       f"{how}? ({AE_TITLE_VARIABLE}, {AE_PORT_VARIABLE})")
        return written[0], written[1]

    def _move(self, query: Any, storage: list[str], handlers: list, what: str,
              cancel: CancelToken | None = None) -> int | None:
        """C-MOVE to Tilewise's AE title, received by a storage service on ``port_for_move`` for the move only."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

        receiver = AE(ae_title=self.calling_aet)
        receiver.network_timeout = TIMEOUT_S
        for syntax in storage:
            receiver.add_supported_context(syntax, ALL_TRANSFER_SYNTAXES)
        try:
            service = receiver.start_server(("", self.port_for_move), block=False, evt_handlers=handlers)
        except OSError as error:
            raise PacsError(None, f"cannot receive the C-MOVE on port {self.port_for_move} "
                                  f"({AE_PORT_VARIABLE}): {error.strerror or error}") from None
        try:
            with self.association([Move], what) as link:
                return _last_status(link.send_c_move(query, self.calling_aet, Move), link, cancel, what)
        finally:
            service.shutdown()

    def store(self, path: Path) -> tuple[str, str, str]:
        """C-STORE of the DICOM file at ``path``; its (study, series, SOP instance) UIDs."""
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        dataset = pydicom.dcmread(path)
        uids = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
        syntaxes = list(dict.fromkeys([str(dataset.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian,
                                       ImplicitVRLittleEndian]))
        what = f"storing {dataset.get('Modality', 'object')} {uids[2]}"
        with self.association([(str(dataset.SOPClassUID), syntaxes)], what) as link:
            status = link.send_c_store(dataset)
        code = int(getattr(status, "Status", 0xC000)) if status else 0xC000
        if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # B-statuses: stored, with a warning
            raise PacsError(self.name, f"the PACS did not store {uids[2]} ({_status(code)})")
        return uids


def _query(level: str, keys: dict[str, str]) -> Any:
    """A C-FIND/C-GET/C-MOVE identifier; raises :class:`InputError` for a key that is no DICOM keyword."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = level
    for key, value in keys.items():
        if tag_for_keyword(key) is None:
            raise InputError(None, f"'{key}' is not a DICOM attribute keyword (a DIMSE search takes keywords such "
                                   "as Modality, StudyDate, SeriesDescription)")
        setattr(query, key, value)
    return query


def _last_status(responses: Any, link: Any = None, cancel: CancelToken | None = None, what: str = "") -> int | None:
    """The final status of a C-GET or C-MOVE's responses (None when the association ended without one); ``cancel``
    aborts ``link`` at the next response (one per instance) and raises :class:`Cancelled`."""
    final = None
    for status, _ in responses:
        if cancel is not None and cancel.cancelled:
            link.abort()
            raise Cancelled(f"{what} was cancelled")
        if status:
            final = int(status.Status)
    return final


def connect_dimse(location: DimseLocation, calling_aet: str | None = None) -> DimseServer:
    """A DIMSE peer for ``location`` with Tilewise's AE title (``calling_aet``, default ``TILEWISE_AE_TITLE``) and
    C-MOVE port; nothing is sent yet."""
    require_dimse()
    return DimseServer(location, calling_aet or calling_ae_title(), move_port())

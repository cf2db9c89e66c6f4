"""The DICOM node's storage service (pynetdicom): C-STORE of any storage class in any transfer syntax, and C-ECHO.

Each instance is written whole into the spool (:meth:`~.spool.Spool.store_instance`) before the sender hears
'stored'. An instance that cannot be decoded, or lacks a valid Study, Series or SOP Instance UID, is refused (status
0xC000 'cannot understand', 0xA900 'does not match the SOP class') with one line, and the node goes on serving; a
full disk answers 0xA700 (out of resources). Objects that hold no image (SEG, SR, RTSTRUCT, ...: such as a SEG of
this node routed back) are answered 'stored' and dropped, so they are never segmented.

Each association's deliveries are tracked: when it is released, its series may settle and be sealed; when it is
aborted or its connection drops, the series it was storing are held (``.aborted``) until a later association
delivers them again and is released. Lines name series by UID and senders by AE title, never a patient.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import TilewiseError
from .common import NON_IMAGE_MODALITIES, PacsAccessError
from .spool import Spool, valid_uid

SUCCESS, OUT_OF_RESOURCES, NOT_SOP_CLASS, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
TIMEOUT_S = 60.0
"""Seconds without a message before an association is given up (and its deliveries held)."""


@dataclass
class _Delivery:
    """What one association stored: per series, its marker and how many instances (and dropped non-images)."""

    number: int
    peer: str
    markers: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    ended: bool = False


class StorageListener:
    """A storage SCP with AE title ``aet`` on ``bind:port`` that writes into ``spool``."""

    def __init__(self, spool: Spool, aet: str, port: int, bind: str = "") -> None:
        self.spool, self.aet, self.port, self.bind = spool, aet, port, bind
        self._server: Any = None
        self._ae: Any = None
        self._deliveries: dict[int, _Delivery] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._writing = threading.Condition()
        self._in_flight = 0

    def start(self) -> None:
        """Listen (returns at once; associations are served on their own threads). Raises one-line errors for a
        port in use (exit 2) or one this user may not open (exit 3)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True  # an association for another AE title is rejected
        ae.maximum_associations = 16
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_RELEASED, self._on_released), (evt.EVT_ABORTED, self._on_cut),
                    (evt.EVT_CONN_CLOSE, self._on_cut)]
        try:
            self._server = ae.start_server((self.bind, self.port), block=False, evt_handlers=handlers)
        except OSError as error:
            where = f"{self.bind or '*'}:{self.port}"
            if isinstance(error, PermissionError):
                raise PacsAccessError(None, f"cannot listen on {where}: permission denied (ports below 1024 need "
                                            "administrator rights; choose --port 11112 or above)") from None
            raise TilewiseError(None, f"cannot listen on {where}: {error.strerror or error} (is another DICOM node "
                                      "running there? choose another --port)") from None
        self._ae = ae

    def stop(self, wait_s: float = 30.0) -> None:
        """Stop listening, abort open associations (their series are held, see the module's description) and wait
        up to ``wait_s`` for the instances being written to be whole."""
        if self._ae is None:
            return
        self._ae.shutdown()
        with self._writing:
            self._writing.wait_for(lambda: self._in_flight == 0, timeout=wait_s)
        self._ae = None

    # -- event handlers (on each association's thread) -----------------------------------------------------------

    def _delivery(self, event: Any) -> _Delivery:
        key = id(event.assoc)
        with self._lock:
            if key not in self._deliveries:
                peer = str(getattr(event.assoc.requestor, "ae_title", "") or "?").strip()
                self._deliveries[key] = _Delivery(next(self._numbers), peer)
            return self._deliveries[key]

    def _on_store(self, event: Any) -> int:
        delivery = self._delivery(event)
        with self._writing:
            self._in_flight += 1
        try:
            return self._store(event, delivery)
        finally:
            with self._writing:
                self._in_flight -= 1
                self._writing.notify_all()

    def _store(self, event: Any, delivery: _Delivery) -> int:
        journal = self.spool.journal
        try:
            dataset = event.dataset
            uids = [str(dataset.get(key, "") or "").strip() for key in
                    ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
            modality = str(dataset.get("Modality", "") or "").upper()
        except Exception as error:  # noqa: BLE001 (pydicom raises many kinds for a malformed stream)
            journal.record("refused", None, f"refused an instance from {delivery.peer}: it cannot be decoded "
                           f"({type(error).__name__})", sender=delivery.peer, reason="undecodable")
            return CANNOT_UNDERSTAND
        _, series, sop = uids
        if not all(valid_uid(uid) for uid in uids):
            missing = [name for name, uid in zip(("Study", "Series", "SOP"), uids) if not valid_uid(uid)]
            journal.record("refused", series if valid_uid(series) else None,
                           f"refused an instance from {delivery.peer}: no valid {', '.join(missing)} Instance UID",
                           sender=delivery.peer, reason="uids")
            return NOT_SOP_CLASS
        if modality in NON_IMAGE_MODALITIES:
            delivery.ignored[series] = delivery.ignored.get(series, 0) + 1
            return SUCCESS
        marker = delivery.markers.setdefault(series, self.spool.open_marker(delivery.number))
        try:
            self.spool.store_instance(series, sop, event.encoded_dataset(), marker)
        except OSError as error:
            journal.record("refused", series, f"refused an instance of series {series} from {delivery.peer}: the "
                           f"spool cannot hold it ({error.strerror or error}); answered 'out of resources'",
                           sender=delivery.peer, reason="disk")
            return OUT_OF_RESOURCES
        delivery.counts[series] = delivery.counts.get(series, 0) + 1
        return SUCCESS

    def _on_released(self, event: Any) -> None:
        self._end(event, cut=False)

    def _on_cut(self, event: Any) -> None:
        self._end(event, cut=True)

    def _end(self, event: Any, cut: bool) -> None:
        """An association ended: its deliveries end (held when ``cut``); the first of release, abort and the
        connection's close decides."""
        with self._lock:
            delivery = self._deliveries.pop(id(event.assoc), None)
        if delivery is None or delivery.ended:
            return
        delivery.ended = True
        journal = self.spool.journal
        for series, marker in delivery.markers.items():
            self.spool.end_delivery(series, marker, cut)
            count = delivery.counts.get(series, 0)
            if cut:
                journal.record("held", series, f"series {series}: the delivery from {delivery.peer} was cut after "
                               f"{count} instance(s) (association aborted or dropped); held until it is sent again",
                               sender=delivery.peer, instances=count)
            else:
                journal.record("received", series, f"series {series}: {count} instance(s) received from "
                               f"{delivery.peer}", sender=delivery.peer, instances=count)
        for series, count in delivery.ignored.items():
            journal.record("ignored", series, f"series {series}: {count} object(s) from {delivery.peer} hold no "
                           "image (SEG, SR, ...); not segmented", sender=delivery.peer, instances=count)

"""``tilewise listen``: a DICOM node that receives series by C-STORE, segments each complete series once and sends
the SEG to a PACS, with its work queued on disk (:mod:`.spool`) so that a malformed object, a dropped association,
a kill -9 or a restart loses and repeats nothing.

Three kinds of threads share one spool: the storage service (:mod:`.listener`, one thread per association), a
scheduler that seals the series that are complete (:mod:`.sealing`) and queues them, and one worker that loads the
model once and runs every queued version through it and to the PACS (:mod:`.segmenter`), oldest first. On start,
the spool is resumed: seals that a dead process left are finished, and every version not yet sent, failed or
superseded is queued again (a SEG written but not sent is sent, not recomputed).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..batch.claims import Claims
from ..batch.stages import CaseStages
from ..errors import Cancelled, TilewiseError
from ..events import CancelToken
from ..predictor import Predictor
from ..presets import Preset
from .common import PacsServer
from .listener import StorageListener
from .sealing import recover, seal, supersede_previous
from .segmenter import ELSEWHERE, RETRY, VersionSegmenter
from .spool import DUPLICATE, FINAL, SENT, SUPERSEDED, Spool, VersionRef

TICK_S = 0.25
RESCAN_S = 30.0
"""How often the spool is searched for versions other nodes sealed (a node knows its own at once)."""
RETRY_S = (15.0, 60.0, 300.0)
"""Waits before a version is tried again after a full disk or a PACS that did not take its SEG (the last repeats)."""


@dataclass
class NodeSettings:
    """What ``tilewise listen`` was asked to do (see ``tilewise listen --help``)."""

    aet: str
    port: int
    spool: Path
    model: str
    preset: Preset
    bind: str = ""
    settle_s: float = 10.0
    device: str = "auto"
    folds: list[str] | None = None
    checkpoint: str | None = None
    trust: bool = False
    nnunet_exact: bool = False
    seg_type: str = "binary"
    output_type: str = "dicom-seg"
    once: bool = False
    """Exit once a version was handled and nothing is left: no series arriving, none queued."""


class _Queue:
    """Versions to handle, each with the time it is due, and whether the worker is busy."""

    def __init__(self) -> None:
        self.due: dict[str, tuple[float, VersionRef]] = {}
        self.tries: dict[str, int] = {}
        self.busy = False
        self.lock = threading.Condition()

    def put(self, ref: VersionRef, delay: float = 0.0) -> None:
        with self.lock:
            if ref.name not in self.due:
                self.due[ref.name] = (time.monotonic() + delay, ref)
                self.lock.notify_all()

    def take(self, timeout: float) -> VersionRef | None:
        """The earliest due version (the worker is then busy with it), or None after ``timeout``."""
        with self.lock:
            deadline = time.monotonic() + timeout
            while True:
                now = time.monotonic()
                ready = [(when, ref.name) for when, ref in self.due.values() if when <= now]
                if ready:
                    self.busy = True
                    return self.due.pop(min(ready)[1])[1]
                if now >= deadline:
                    return None
                self.lock.wait(min(deadline - now, TICK_S))

    def done(self) -> None:
        with self.lock:
            self.busy = False

    def idle(self) -> bool:
        with self.lock:
            return not self.due and not self.busy


class Node:
    """The DICOM node (see the module's description): :meth:`start`, :meth:`wait` (until a fatal error or, with
    ``once``, idle; Ctrl-C and SIGTERM interrupt it), then :meth:`stop`."""

    def __init__(self, settings: NodeSettings, server: PacsServer, spool: Spool) -> None:
        self.settings, self.server, self.spool = settings, server, spool
        self.journal = spool.journal
        self.claims = Claims(spool.root)
        self.cancel = CancelToken()
        self.queue = _Queue()
        self.listener = StorageListener(spool, settings.aet, settings.port, settings.bind)
        self.finished = threading.Event()
        self.error: TilewiseError | None = None
        self.handled: dict[str, int] = {}
        self._known_final: set[str] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Resume the spool, listen, and start the scheduler and the worker (which loads the model)."""
        self._rescan()
        self.listener.start()
        where = f"{self.settings.bind or '*'}:{self.settings.port}"
        self.journal.record("listening", None, f"listening as {self.settings.aet} on {where}; spool "
                            f"{self.spool.root}; SEGs go to {self.server.name}", aet=self.settings.aet,
                            port=self.settings.port)
        for target, name in ((self._schedule, "tilewise-scheduler"), (self._work, "tilewise-worker")):
            thread = threading.Thread(target=self._guarded(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait(self) -> None:
        """Block until the node is finished (``once``, or a fatal error); Ctrl-C and SIGTERM interrupt it."""
        while not self.finished.wait(TICK_S):
            pass

    def stop(self, wait_s: float = 120.0) -> None:
        """Stop listening (open deliveries are held), cancel the segmentation at its next check (a SEG being
        written is finished), and wait for the threads."""
        self.finished.set()
        self.cancel.cancel()
        self.listener.stop()
        for thread in self._threads:
            thread.join(timeout=wait_s)
        self.claims.release_all()

    def unsent(self) -> int:
        """How many versions this run handled that ended failed or not sent (to be retried at the next start)."""
        return sum(count for state, count in self.handled.items() if state not in (SENT, DUPLICATE, SUPERSEDED))

    # -- threads ---------------------------------------------------------------------------------------------------

    def _guarded(self, target: Callable[[], None]) -> Callable[[], None]:
        """``target`` with its fatal error kept in :attr:`error` for the caller (one line, never a traceback)."""
        def run() -> None:
            try:
                target()
            except Cancelled:
                pass
            except TilewiseError as error:
                self.error = error
            except Exception as error:  # noqa: BLE001
                self.error = TilewiseError(None, f"the node stopped: unexpected {type(error).__name__}: {error}")
            finally:
                self.finished.set()
        return run

    def _schedule(self) -> None:
        last_scan = time.monotonic()
        while not self.finished.is_set():
            ready, arriving, _ = self.spool.arrivals(self.settings.settle_s)
            for series in ready:
                try:
                    ref = seal(self.spool, series)
                    if ref is not None:
                        supersede_previous(self.spool, ref, self.claims)
                        self.queue.put(ref)
                except (OSError, TilewiseError) as error:  # a full disk: the series stays, sealed on a later tick
                    reason = error.strerror or error if isinstance(error, OSError) else error
                    self.journal.record("retry", series, f"series {series}: cannot be sealed now ({reason}); "
                                        "tried again")
                    time.sleep(RETRY_S[0] / 15)
            if time.monotonic() - last_scan > RESCAN_S:
                try:
                    self._rescan()
                except (OSError, TilewiseError) as error:
                    self.journal.record("retry", None, f"the spool cannot be searched now ({error}); tried again")
                last_scan = time.monotonic()
            if self.settings.once and self.handled and not ready and not arriving and self.queue.idle():
                self.finished.set()
                return
            time.sleep(TICK_S)

    def _rescan(self) -> None:
        """Queue every version of the spool that is not final (after a restart, sealed by another node, or whose
        seal a full disk stopped)."""
        for ref in recover(self.spool, own=True):
            supersede_previous(self.spool, ref, self.claims)
        for ref in self.spool.versions():
            if ref.name in self._known_final:
                continue
            if self.spool.read_state(ref).get("state") in FINAL:
                self._known_final.add(ref.name)
                self.claims.clear_stale(ref.name)  # its node was killed after the last step, before letting go
            else:
                self.queue.put(ref)

    def _work(self) -> None:
        settings = self.settings
        predictor = Predictor(settings.model, settings.preset, device=settings.device, folds=settings.folds,
                              checkpoint_name=settings.checkpoint, trust=settings.trust,
                              nnunet_exact=settings.nnunet_exact, cancel=self.cancel)
        self.journal.record("model", None, f"model loaded in {predictor.load_seconds:.1f}s "
                            f"({predictor.backend.describe()})", seconds=round(predictor.load_seconds, 2))
        stages = CaseStages(predictor, None, seg_type=settings.seg_type)
        segmenter = VersionSegmenter(self.spool, self.claims, stages, self.server, self.cancel,
                                     settings.output_type)
        while not self.finished.is_set():
            ref = self.queue.take(TICK_S)
            if ref is None:
                continue
            try:
                try:
                    outcome = segmenter.handle(ref)
                except (OSError, TilewiseError) as error:  # its claim or state cannot be written (a full disk)
                    self.journal.record("retry", ref.series, f"series {ref.series}: version {ref.number} not "
                                        f"handled now, tried again later: {error}", version=ref.number)
                    outcome = RETRY
                self._settle(ref, outcome)
            finally:
                self.queue.done()

    def _settle(self, ref: VersionRef, outcome: str) -> None:
        """Count ``outcome`` of ``ref``; queue it again later when it is to be retried (not with ``once``)."""
        if outcome == RETRY and not self.settings.once:
            tries = self.queue.tries.get(ref.name, 0)
            self.queue.tries[ref.name] = tries + 1
            self.queue.put(ref, RETRY_S[min(tries, len(RETRY_S) - 1)])
            return
        if outcome != ELSEWHERE:
            self.handled[outcome] = self.handled.get(outcome, 0) + 1
        if outcome in FINAL:
            self._known_final.add(ref.name)

"""One sealed series version through the node's model and back to the PACS, resumable at every step.

:meth:`VersionSegmenter.handle` claims the version (:class:`~..batch.claims.Claims`: two nodes on one spool never
segment it both), reads its state and does only what is left:

- ``sent``, ``failed``, ``duplicate``, ``superseded``: nothing;
- ``written``: the SEG on the disk is checked against the size and SHA-256 recorded when it was written; whole, it
  is sent (the same file, so the same SOP Instance UID: a PACS that got it before the node died keeps one copy);
  changed or missing, the version is segmented again;
- ``queued``: read -> predict -> write the SEG (the batch's :class:`~..batch.stages.CaseStages`, the same bytes as
  ``tilewise predict``), its size and SHA-256 recorded (``written``), then sent (``sent``).

A series that cannot be segmented (not an image volume, a geometry the reader refuses, out of memory) is
``failed`` with its one-line reason and not retried; a full disk or a read-only spool, and a PACS that does not take
the SEG, leave the version to be retried (:data:`RETRY`).
"""
from __future__ import annotations

import time
from pathlib import Path

from ..batch.claims import Claims
from ..batch.integrity import check_outputs, fingerprints
from ..batch.stages import CaseStages, run_in_row
from ..data.cases import Case
from ..data.outputs import OUTPUT_SUFFIXES
from ..data.safe_output import clean_stale_staging
from ..errors import Cancelled, DiskSpaceError, TilewiseError, WriteAccessError
from ..events import CancelToken
from .common import PacsError, PacsServer
from .spool import FAILED, FINAL, SENT, WRITTEN, Spool, VersionRef, now_iso

RETRY, ELSEWHERE = "retry", "elsewhere"
"""Outcomes besides the states: try again later (the disk, the PACS), or another node holds the version."""


class VersionSegmenter:
    """Segments and sends versions of ``spool`` with ``stages`` (one loaded model) to ``server``."""

    def __init__(self, spool: Spool, claims: Claims, stages: CaseStages, server: PacsServer, cancel: CancelToken,
                 output_type: str = "dicom-seg") -> None:
        self.spool, self.claims, self.stages, self.server, self.cancel = spool, claims, stages, server, cancel
        self.suffix = OUTPUT_SUFFIXES[output_type]

    def output(self, ref: VersionRef) -> Path:
        """Where the version's SEG (or RTSTRUCT) is written: ``<version>/<SeriesUID>_seg.dcm``."""
        return ref.folder / f"{ref.series}{self.suffix}"

    def handle(self, ref: VersionRef) -> str:
        """Do what is left of ``ref`` (see the module's description); its state afterwards, :data:`RETRY` or
        :data:`ELSEWHERE`. Raises :class:`Cancelled` when the node stops mid-way (the version stays as it was,
        or ``written`` when its SEG was written)."""
        if self.claims.claim(ref.name, []) is not None:
            return ELSEWHERE
        try:
            clean_stale_staging(ref.folder)  # a SEG half-written when a node was killed
            state = self.spool.read_state(ref)
            if state["state"] in FINAL:
                return str(state["state"])
            return self._finish(ref, state)
        finally:
            self.claims.release(ref.name)

    def _finish(self, ref: VersionRef, state: dict) -> str:
        journal, output = self.spool.journal, self.output(ref)
        redo = state["state"] != WRITTEN
        if not redo:
            why = check_outputs([output], state.get("files"))
            if why is not None:
                journal.record("redo", ref.series, f"series {ref.series}: version {ref.number} is segmented again, "
                               f"its SEG cannot be sent as written ({why})", version=ref.number, reason=why)
                redo = True
        if redo:
            outcome = self._segment(ref, output)
            if outcome is not None:
                return outcome
        if self.cancel.cancelled:  # the SEG is whole and recorded: the next start sends it
            raise Cancelled()
        return self._send(ref, output)

    def _segment(self, ref: VersionRef, output: Path) -> str | None:
        """Write the version's SEG and record it (``written``); None when it was, else the outcome."""
        journal = self.spool.journal
        started = time.perf_counter()
        try:
            item = run_in_row(self.stages, Case(ref.series, (ref.instances,), output), self.cancel)
        except (Cancelled, KeyboardInterrupt):
            raise
        except (DiskSpaceError, WriteAccessError) as error:
            journal.record("retry", ref.series, f"series {ref.series}: version {ref.number} not segmented, tried "
                           f"again later: {error}", version=ref.number, reason=str(error))
            return RETRY
        except Exception as error:  # noqa: BLE001 (one series must never stop the node: its reason is recorded)
            reason = str(error) if isinstance(error, TilewiseError) else _unexpected(error)
            self.spool.write_state(ref, state=FAILED, reason=reason, failed=now_iso())
            journal.record(FAILED, ref.series, f"series {ref.series}: version {ref.number} cannot be segmented: "
                           f"{reason}", version=ref.number, reason=reason)
            return FAILED
        seconds = round(time.perf_counter() - started, 2)
        timings = {name: round(value, 3) for name, value in item.timings.items()}
        self.spool.write_state(ref, state=WRITTEN, files=fingerprints([output]), output=output.name,
                               written=now_iso(), seconds=seconds, timings=timings)
        journal.record("segmented", ref.series, f"series {ref.series}: version {ref.number} segmented in "
                       f"{seconds:.1f}s", version=ref.number, seconds=seconds)
        return None

    def _send(self, ref: VersionRef, output: Path) -> str:
        journal = self.spool.journal
        started = time.perf_counter()
        try:
            study, _, instance = self.server.store(output)
        except (PacsError, OSError) as error:
            reason = str(error) if isinstance(error, PacsError) else f"{output.name}: {error}"
            self.spool.write_state(ref, send_error=reason)
            journal.record("send-failed", ref.series, f"series {ref.series}: version {ref.number}'s SEG not "
                           f"stored, tried again later: {reason}", version=ref.number, reason=reason)
            return RETRY
        seconds = round(time.perf_counter() - started, 2)
        self.spool.write_state(ref, state=SENT, sent=now_iso(), seg_uid=instance, study=study, send_error=None)
        journal.record(SENT, ref.series, f"series {ref.series}: SEG {instance} stored on {self.server.name} in "
                       f"{seconds:.1f}s", version=ref.number, seg_uid=instance, seconds=seconds)
        return SENT


def _unexpected(error: BaseException) -> str:
    """One line for an error no check foresaw (its type and first line, never a traceback)."""
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"unexpected {type(error).__name__}" + (f": {text}" if text else "")

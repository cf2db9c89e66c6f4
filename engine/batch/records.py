"""What a batch keeps of each case (status, reason, timings, device, worker), and :func:`run_case`: one case from
files to labels through a loaded predictor, as one call that never raises for a bad case."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import Cancelled, TilewiseError
from ..events import CancelToken
from ..postprocess.uncertainty import uncertain_volume_ml
from ..runtime.memory import free_device_memory, is_out_of_memory
from .cases import BatchCase, case_outputs
from .integrity import fingerprints
from .stages import STAGES, CaseStages, InFlight

DONE, FAILED, SKIPPED, INTERRUPTED = "done", "failed", "skipped", "interrupted"
ELSEWHERE = "elsewhere"
"""A case another batch process on the same output folder runs or ran (see :mod:`.claims`)."""


def this_worker() -> str:
    """The name a case's record gives the process that ran it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class CaseRecord:
    """One line of ``batch_summary.json``."""

    case: str
    inputs: list[str]
    outputs: list[str]
    status: str
    reason: str | None = None
    stage: str | None = None
    """The stage that failed (read, preprocess, sliding_window, export, write)."""
    timings: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    worker: str | None = None
    started: str | None = None
    finished: str | None = None
    tiles: int | None = None
    forward_passes: int | None = None
    notes: list[str] = field(default_factory=list)
    earlier: dict[str, Any] | None = None
    """For a skipped case: the record of the run that wrote its outputs, from the summary that run left."""
    retries: list[str] = field(default_factory=list)
    """With ``--ray``: each earlier attempt that ended with its actor dying (when, which actor, why)."""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each output's ``{"size": bytes, "sha256": hex}`` as written, which a resume re-checks (done, skipped)."""
    uncertain_volume_ml: float | None = None
    """With ``--save_uncertainty``: the volume (mL) of the voxels whose uncertainty is at least
    :data:`~tilewise.engine.postprocess.uncertainty.UNCERTAIN_THRESHOLD` (50); left out of the JSON otherwise."""

    @classmethod
    def for_case(cls, case: BatchCase, status: str, with_probabilities: bool, reason: str | None = None,
                 with_uncertainty: bool = False) -> CaseRecord:
        """A record of ``case`` with no run behind it (skipped, or failed before any stage)."""
        outputs = case_outputs(case.case, with_probabilities, with_uncertainty)
        return cls(case=case.name, inputs=[str(p) for p in case.case.inputs], outputs=[str(p) for p in outputs],
                   status=status, reason=reason)

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON values, timings rounded to milliseconds."""
        payload = asdict(self)
        payload["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        if self.uncertain_volume_ml is None:
            del payload["uncertain_volume_ml"]
        return payload


def failure_reason(error: BaseException) -> str:
    """One sentence for why a case failed: the engine's own message, or what kind of failure a library raised."""
    if isinstance(error, TilewiseError):
        return str(error)
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    if isinstance(error, (RuntimeError, MemoryError)) and is_out_of_memory(error):
        return f"out of memory ({text}); try a faster preset, fewer folds, --batch-size 1 or --device cpu"
    if isinstance(error, OSError):
        return f"cannot read or write a file ({text})"
    return f"unexpected error ({type(error).__name__}: {text})"


class CaseRun:
    """The record of one case while its stages run: timings, device, worker, and the outcome of each stage."""

    def __init__(self, stages: CaseStages, case: BatchCase, worker: str) -> None:
        self.stages = stages
        self.item = InFlight(case.case)
        self.record = CaseRecord.for_case(case, DONE, stages.with_probabilities,
                                          with_uncertainty=stages.with_uncertainty)
        self.record.device = str(stages.predictor.device)
        self.record.worker = worker
        self.record.started = now_iso()
        self._started = time.perf_counter()

    @property
    def ended(self) -> bool:
        """Whether the case has failed or was interrupted (a finished case ends with :meth:`finish`)."""
        return self.record.finished is not None

    def stage(self, name: str, cancel: CancelToken | None) -> bool:
        """Run stage ``name``; False (and the record says why) when it failed or was cancelled."""
        try:
            self.stages.run_stage(name, self.item, cancel)
            return True
        except Cancelled:
            self._end(INTERRUPTED, name, "the batch was interrupted")
        except Exception as error:  # noqa: BLE001 - a failing case is recorded and the batch goes on
            free_device_memory(self.stages.predictor.device)
            self._end(FAILED, name, failure_reason(error))
        return False

    def interrupted(self) -> CaseRecord:
        """The record of a case the batch stopped before its next stage."""
        self._end(INTERRUPTED, None, "the batch was interrupted")
        return self.record

    def finish(self) -> CaseRecord:
        """The record once every stage ran (status done, tiles, passes, notes)."""
        result = self.item.result
        if self.record.status == DONE and result is not None:
            try:
                self._summarise(result)
            except Exception as error:  # noqa: BLE001 - a record that cannot be made fails its case, not the batch
                self._end(FAILED, "write", failure_reason(error))  # (a writer thread that died would hang it)
        if not self.ended:
            self._end(self.record.status, self.record.stage, self.record.reason)
        self.item = InFlight(self.item.case)  # drop the volume, logits and labels
        return self.record

    def _summarise(self, result: Any) -> None:
        """Tiles, passes, notes, the uncertain volume and the outputs' fingerprints of a case that ran."""
        self.record.tiles, self.record.forward_passes = result.tiles, result.forward_passes
        self.record.notes = list(result.notes)
        if self.stages.with_uncertainty and result.uncertainty is not None:  # a task's result has none
            self.record.uncertain_volume_ml = round(uncertain_volume_ml(result.uncertainty, result.geometry), 3)
        self._fingerprint()

    def _fingerprint(self) -> None:
        """Record each output's size and checksum, read back from the disk (a file that cannot be read fails)."""
        try:
            self.record.files = fingerprints(Path(path) for path in self.record.outputs)
        except OSError as error:
            self._end(FAILED, "write", failure_reason(error))

    def _end(self, status: str, stage: str | None, reason: str | None) -> None:
        self.record.status, self.record.stage, self.record.reason = status, stage, reason
        self.record.timings = {**self.item.timings, "total": time.perf_counter() - self._started}
        self.record.finished = now_iso()


def problem_record(case: BatchCase, with_probabilities: bool, worker: str, with_uncertainty: bool = False) -> CaseRecord:
    """The failed record of a case found unfit before reading (a missing channel file, ...)."""
    record = CaseRecord.for_case(case, FAILED, with_probabilities, f"{case.case.inputs[0]}: {case.problem}",
                                 with_uncertainty)
    record.stage, record.worker, record.finished = "read", worker, now_iso()
    return record


def run_case(stages: CaseStages, case: BatchCase, cancel: CancelToken | None = None,
             worker: str | None = None) -> CaseRecord:
    """Read, predict and write ``case`` with ``stages``' loaded predictor; the record says how it went.

    A bad case (unreadable, wrong channels, out of memory, ...) returns a failed record instead of raising; a
    cancelled one an interrupted record (nothing of it is written: every output is written atomically).
    """
    if case.problem is not None:
        return problem_record(case, stages.with_probabilities, worker or this_worker(), stages.with_uncertainty)
    run = CaseRun(stages, case, worker or this_worker())
    for name in STAGES:
        if not run.stage(name, cancel):
            break
    return run.finish()

"""A batch's side of sharing an output folder with other batch processes: claim each case just before running it
(see :mod:`.claims`), and the record of a case another process runs or ran."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TilewiseError
from .cases import BatchCase, case_outputs
from .claims import DONE, HOST, Claims, owner_of
from .records import ELSEWHERE, FAILED, CaseRecord, now_iso, this_worker


def elsewhere_record(case: BatchCase, with_probabilities: bool, claim: dict[str, Any],
                     with_uncertainty: bool = False) -> CaseRecord:
    """The record of a case that another batch process (``claim``'s owner) runs, or finished during this run."""
    owner = owner_of(claim)
    if claim.get("state") == DONE:
        reason = f"done by another batch process ({owner})"
    else:
        reason = f"being run by another batch process ({owner}, since {claim.get('claimed', '?')})"
    record = CaseRecord.for_case(case, ELSEWHERE, with_probabilities, reason, with_uncertainty)
    record.worker, record.finished = owner, now_iso()
    record.files = dict(claim.get("files") or {})
    return record


def claimer(claims: Claims, with_probabilities: bool,
            with_uncertainty: bool = False) -> Callable[[BatchCase], CaseRecord | None]:
    """The pipeline's ``claim`` hook: None when this process now holds the case, else the record to yield instead
    (run elsewhere, or failed when the claim cannot be written: a full disk, a read-only folder)."""

    def claim(case: BatchCase) -> CaseRecord | None:
        try:
            other = claims.claim(case.name, case_outputs(case.case, with_probabilities, with_uncertainty))
        except TilewiseError as error:
            record = CaseRecord.for_case(case, FAILED, with_probabilities, str(error), with_uncertainty)
            record.stage, record.worker, record.finished = "claim", this_worker(), now_iso()
            return record
        if other is None:
            return None
        return elsewhere_record(case, with_probabilities, other, with_uncertainty)

    return claim


def summary_for_this_process(claims: Claims, path: Path) -> Path:
    """``path`` when no other live batch process writes that summary, else a summary of this process's own
    (``batch_summary.<host>-<pid>.json``), so that processes sharing a folder do not replace each other's."""
    if claims.claim(path.name, []) is None:
        return path
    return path.with_name(f"{path.stem}.{HOST}-{os.getpid()}{path.suffix}")

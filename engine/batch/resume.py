"""Which cases a batch still has to run: a case is finished only when every output it recorded (size and SHA-256,
in its done claim or in the summary an earlier run left) is there, whole and unchanged. Anything else is redone."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cases import BatchCase, case_outputs
from .claims import Claims
from .integrity import check_outputs
from .records import CaseRecord
from .summary import recorded_files, skipped_record


@dataclass
class ResumePlan:
    """The cases to run, the records of those checked finished, and why outputs that exist are redone."""

    todo: list[BatchCase] = field(default_factory=list)
    skipped: list[CaseRecord] = field(default_factory=list)
    redone: dict[str, str] = field(default_factory=dict)
    """Case -> why its existing outputs cannot be kept (truncated, changed, no record of them)."""


def finished_files(case: BatchCase, with_probabilities: bool, claims: Claims, earlier: dict[str, Any] | None,
                   with_uncertainty: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """The recorded outputs of ``case`` (the uncertainty map too when asked for) when they all check whole and
    unchanged, else None and why not (None when no output exists: nothing to explain)."""
    outputs = case_outputs(case.case, with_probabilities, with_uncertainty)
    why = None
    for files in (claims.done_files(case.name), recorded_files(earlier)):
        why = check_outputs(outputs, files)
        if why is None:
            return files, None
    if not any(path.exists() for path in outputs):
        return None, None
    return None, why


def plan_resume(cases: list[BatchCase], with_probabilities: bool, overwrite: bool, claims: Claims,
                earlier: dict[str, dict[str, Any]], with_uncertainty: bool = False) -> ResumePlan:
    """Split ``cases`` into those to run and those finished earlier (every case is run with ``overwrite``)."""
    plan = ResumePlan()
    for case in cases:
        if overwrite:
            plan.todo.append(case)
            continue
        files, why = finished_files(case, with_probabilities, claims, earlier.get(case.name), with_uncertainty)
        if files is not None:
            plan.skipped.append(skipped_record(case, with_probabilities, earlier.get(case.name), files,
                                               with_uncertainty))
            continue
        plan.todo.append(case)
        if why is not None:
            plan.redone[case.name] = why
    return plan

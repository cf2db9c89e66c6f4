"""A batch run from its settings: plan the cases, skip those checked finished, run the rest here (the pipeline) or
elsewhere (a :class:`RemoteRunner` such as Ray's), claiming each case so that several processes share a folder,
collect the records into the summary, stop on Ctrl-C or SIGTERM.

Exit status: 0 when every case succeeded (or was finished earlier, or by another process), 3 when some failed, 130
when interrupted (Ctrl-C), 143 when terminated (SIGTERM).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from ..data.outputs import with_output_type
from ..data.safe_output import refuse_overwriting_inputs
from ..errors import InputError
from ..events import CancelToken
from ..model.bundle import dataset_channel_count
from ..model.totalseg import resolve_task, task_name
from ..postprocess.uncertainty import UNCERTAIN_THRESHOLD
from ..predictor import Predictor
from ..runtime.memory import peak_rss_bytes
from ..runtime.memory_plan import MemoryBudget
from ..runtime.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt
from ..task_predictor import TaskPredictor
from .cases import BatchCase, case_outputs, collect_batch_cases, shard
from .claims import Claims
from .collect import collect
from .pipeline import BatchPipeline
from .records import DONE, ELSEWHERE, FAILED, CaseRecord, now_iso, this_worker
from .resume import plan_resume
from .settings import BatchSettings, refuse_unsupported_uncertainty
from .sharing import claimer, summary_for_this_process
from .stages import CaseStages
from .summary import BatchSummary, earlier_records, predictor_header, summary_path
from .task_stages import TaskCaseStages, task_header

EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


class RemoteRunner(Protocol):
    """Runs a batch's cases outside this process (e.g. on Ray actors: :mod:`..distributed`)."""

    def prepare(self, settings: BatchSettings) -> BatchSettings:
        """Check what the runner needs before any work; the settings as it needs them (e.g. absolute paths)."""
        ...

    def run(self, settings: BatchSettings, todo: list[BatchCase], summary: BatchSummary, total: int,
            claims: Claims) -> KeyboardInterrupt | None:
        """Run ``todo`` (claimed by this process) into ``summary``, settling ``claims``; what stopped it, or None."""
        ...


def run_batch(settings: BatchSettings, remote: RemoteRunner | None = None) -> int:
    """Run a batch as ``settings`` say, here or with ``remote``; returns the exit status. SIGTERM is handled as
    Ctrl-C (the file being written is finished, the summary updated), with exit status 143."""
    if settings.workers < 1:
        raise InputError("--workers", f"must be 1 or more (got {settings.workers})")
    refuse_unsupported_uncertainty(settings)
    with sigterm_as_interrupt():
        try:
            return _run(settings, remote)
        except Terminated:  # before or after the cases ran: nothing was being written
            print("tilewise: terminated (SIGTERM); nothing half-written is kept", file=sys.stderr)
            return EXIT_TERMINATED


def _run(settings: BatchSettings, remote: RemoteRunner | None) -> int:
    if remote is not None:
        settings = remote.prepare(settings)
    cases, base = plan_cases(settings)
    claims = Claims(settings.output)
    try:
        path = summary_for_this_process(claims, base)
        plan = plan_resume(cases, settings.save_probabilities, settings.overwrite, claims, earlier_records(base),
                           settings.save_uncertainty)
        if not settings.quiet:
            for name, why in plan.redone.items():
                print(f"tilewise: {name}: redone, its earlier output cannot be kept ({why})", file=sys.stderr)
        predictor: Predictor | TaskPredictor | None = None
        if plan.todo and remote is None:  # a run over a finished folder loads no model
            predictor = _load(settings)
        summary = BatchSummary(path, _header(settings, predictor))
        for record in plan.skipped:
            summary.add(record)
        if settings.verbose and not settings.quiet and predictor is not None:
            print(f"tilewise: {len(plan.todo)} of {len(cases)} case(s) to run on {summary.header['backend']}, "
                  f"{settings.workers} worker(s)", file=sys.stderr)
        stopped = None
        if predictor is not None:
            stopped = _run_here(settings, predictor, plan.todo, summary, claims)
        elif plan.todo and remote is not None:
            stopped = _run_remote(settings, remote, plan.todo, summary, claims, len(cases))
        summary.save(finished=stopped is None, peak_rss_mb=_peak_mb())
        if not settings.quiet:
            print(_last_line(summary, stopped, len(plan.skipped)), file=sys.stderr)
    finally:
        claims.release_all()
    if stopped is not None:
        return EXIT_TERMINATED if isinstance(stopped, Terminated) else EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if summary.count(FAILED) else 0


def _load(settings: BatchSettings) -> Predictor | TaskPredictor:
    """The batch's model, loaded once: one nnU-Net model, or every model of a TotalSegmentator task."""
    name = task_name(settings.model)
    if name is not None:
        return TaskPredictor(resolve_task(name, settings.fast, settings.roi_subset), settings.preset,
                             device=settings.device, folds=settings.folds, step=settings.step, trust=settings.trust,
                             nnunet_exact=settings.nnunet_exact)
    return Predictor(settings.model, settings.preset, device=settings.device, folds=settings.folds,
                     checkpoint_name=settings.checkpoint, trust=settings.trust, nnunet_exact=settings.nnunet_exact,
                     run_previous_stage=settings.prev_stage_predictions is None)


def _last_line(summary: BatchSummary, stopped: KeyboardInterrupt | None, skipped: int) -> str:
    state = "finished" if stopped is None else "terminated" if isinstance(stopped, Terminated) else "interrupted"
    elsewhere = summary.count(ELSEWHERE)
    shared = f", {elsewhere} run by other batch processes" if elsewhere else ""
    return (f"tilewise: batch {state}: {summary.count(DONE)} done, {summary.count(FAILED)} failed, {skipped} skipped "
            f"(finished earlier){shared} in {summary.elapsed:.1f}s; summary: {summary.path}")


def plan_cases(settings: BatchSettings) -> tuple[list[BatchCase], Path]:
    """This part's cases and its summary's path, after refusing any output that would land on an input."""
    channels = 1 if task_name(settings.model) is not None else dataset_channel_count(settings.model)
    cases = collect_batch_cases(settings.input, settings.output, channels)
    typed = with_output_type([case.case for case in cases], settings.output_type)
    cases = [replace(case, case=output) for case, output in zip(cases, typed)]
    cases = shard(cases, settings.num_parts, settings.part_id)
    summary = summary_path(settings.output, settings.num_parts, settings.part_id)
    outputs = [path for case in cases
               for path in case_outputs(case.case, settings.save_probabilities, settings.save_uncertainty)]
    refuse_overwriting_inputs([*outputs, summary], [path for case in cases for path in case.case.inputs])
    return cases, summary


def _header(settings: BatchSettings, predictor: Predictor | TaskPredictor | None) -> dict:
    header: dict = {"tool": "tilewise batch", "input": str(settings.input), "output": str(settings.output),
                    "model": str(settings.model), "preset": settings.preset_name, "part_id": settings.part_id,
                    "num_parts": settings.num_parts, "workers": settings.workers, "worker": this_worker(),
                    "started": now_iso()}
    if isinstance(predictor, TaskPredictor):
        header.update(task_header(predictor))
    elif predictor is not None:
        header.update(predictor_header(predictor))
    if settings.save_uncertainty:  # what each case's uncertain_volume_ml counts
        header["uncertainty_threshold"] = UNCERTAIN_THRESHOLD
    return header


def _run_here(settings: BatchSettings, predictor: Predictor | TaskPredictor, todo: list[BatchCase],
              summary: BatchSummary, claims: Claims) -> KeyboardInterrupt | None:
    """Run ``todo`` through the pipeline in this process, each case claimed just before it is read."""
    budget = MemoryBudget.available_now(predictor.device)
    stages: CaseStages | TaskCaseStages
    if isinstance(predictor, TaskPredictor):
        stages = TaskCaseStages(predictor, budget, settings.series_uid, seg_type=settings.seg_type)
    else:
        stages = CaseStages(predictor, budget, settings.save_probabilities, settings.series_uid,
                            seg_type=settings.seg_type, prev_stage_predictions=settings.prev_stage_predictions,
                            with_uncertainty=settings.save_uncertainty)
    cancel = CancelToken()
    pipeline = BatchPipeline(stages, settings.workers, cancel, this_worker(),
                             claimer(claims, settings.save_probabilities, settings.save_uncertainty))

    def stop() -> list[CaseRecord]:
        cancel.cancel()
        return pipeline.join()

    return collect(settings, todo, summary, pipeline.run(todo), stop, claims)


def _run_remote(settings: BatchSettings, remote: RemoteRunner, todo: list[BatchCase], summary: BatchSummary,
                claims: Claims, total: int) -> KeyboardInterrupt | None:
    """Claim ``todo`` at once (one driver feeds every remote worker), then run what this process holds remotely."""
    claim = claimer(claims, settings.save_probabilities, settings.save_uncertainty)
    mine = []
    for case in todo:
        record = claim(case)
        if record is None:
            mine.append(case)
        else:
            summary.add(record)
    return remote.run(settings, mine, summary, total, claims) if mine else None


def _peak_mb() -> float | None:
    peak = peak_rss_bytes()
    return round(peak / 2**20, 1) if peak is not None else None

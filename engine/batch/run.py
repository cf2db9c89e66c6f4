"""A batch run from its settings: plan the cases, skip the finished ones, run the rest here (the pipeline) or
elsewhere (a :class:`RemoteRunner` such as Ray's), collect the records into the summary, stop on Ctrl-C.

Exit status: 0 when every case succeeded (or was finished earlier), 3 when some failed, 130 when interrupted.
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
from ..predictor import Predictor
from ..runtime.memory import peak_rss_bytes
from ..runtime.memory_plan import MemoryBudget
from .cases import BatchCase, case_outputs, collect_batch_cases, is_finished, shard
from .collect import collect
from .pipeline import BatchPipeline
from .records import FAILED, INTERRUPTED, CaseRecord, now_iso, this_worker
from .settings import BatchSettings
from .stages import CaseStages
from .summary import BatchSummary, earlier_records, predictor_header, skipped_record, summary_path

EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


class RemoteRunner(Protocol):
    """Runs a batch's cases outside this process (e.g. on Ray actors: :mod:`..distributed`)."""

    def prepare(self, settings: BatchSettings) -> BatchSettings:
        """Check what the runner needs before any work; the settings as it needs them (e.g. absolute paths)."""
        ...

    def run(self, settings: BatchSettings, todo: list[BatchCase], summary: BatchSummary, total: int) -> bool:
        """Run ``todo`` into ``summary``; True when Ctrl-C stopped it."""
        ...


def run_batch(settings: BatchSettings, remote: RemoteRunner | None = None) -> int:
    """Run a batch as ``settings`` say, here or with ``remote``; returns the exit status."""
    if settings.workers < 1:
        raise InputError("--workers", f"must be 1 or more (got {settings.workers})")
    if remote is not None:
        settings = remote.prepare(settings)
    cases, path = plan_cases(settings)
    earlier = earlier_records(path)
    todo = [case for case in cases if settings.overwrite or not is_finished(case.case, settings.save_probabilities)]
    running = {case.name for case in todo}
    skipped = [skipped_record(case, settings.save_probabilities, earlier.get(case.name))
               for case in cases if case.name not in running]
    predictor = None
    if todo and remote is None:  # a run over a finished folder loads no model
        predictor = Predictor(settings.model, settings.preset, device=settings.device, folds=settings.folds,
                              checkpoint_name=settings.checkpoint, trust=settings.trust,
                              nnunet_exact=settings.nnunet_exact)
    summary = BatchSummary(path, _header(settings, predictor))
    for record in skipped:
        summary.add(record)
    if settings.verbose and not settings.quiet and predictor is not None:
        print(f"tilewise: {len(todo)} of {len(cases)} case(s) to run on {summary.header['backend']}, "
              f"{settings.workers} worker(s)", file=sys.stderr)
    interrupted = False
    if predictor is not None:
        interrupted = _run_here(settings, predictor, todo, summary)
    elif todo and remote is not None:
        interrupted = remote.run(settings, todo, summary, len(cases))
    summary.save(finished=not interrupted, peak_rss_mb=_peak_mb())
    failed, done = summary.count(FAILED), len(todo) - summary.count(FAILED) - summary.count(INTERRUPTED)
    if not settings.quiet:
        state = "interrupted" if interrupted else "finished"
        print(f"tilewise: batch {state}: {done} done, {failed} failed, {len(skipped)} skipped (finished earlier) "
              f"in {summary.elapsed:.1f}s; summary: {path}", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if failed else 0


def plan_cases(settings: BatchSettings) -> tuple[list[BatchCase], Path]:
    """This part's cases and its summary's path, after refusing any output that would land on an input."""
    cases = collect_batch_cases(settings.input, settings.output, dataset_channel_count(settings.model))
    typed = with_output_type([case.case for case in cases], settings.output_type)
    cases = [replace(case, case=output) for case, output in zip(cases, typed)]
    cases = shard(cases, settings.num_parts, settings.part_id)
    summary = summary_path(settings.output, settings.num_parts, settings.part_id)
    outputs = [path for case in cases for path in case_outputs(case.case, settings.save_probabilities)]
    refuse_overwriting_inputs([*outputs, summary], [path for case in cases for path in case.case.inputs])
    return cases, summary


def _header(settings: BatchSettings, predictor: Predictor | None) -> dict:
    header: dict = {"tool": "tilewise batch", "input": str(settings.input), "output": str(settings.output),
                    "model": str(settings.model), "preset": settings.preset_name, "part_id": settings.part_id,
                    "num_parts": settings.num_parts, "workers": settings.workers, "started": now_iso()}
    if predictor is not None:
        header.update(predictor_header(predictor))
    return header


def _run_here(settings: BatchSettings, predictor: Predictor, todo: list[BatchCase], summary: BatchSummary) -> bool:
    """Run ``todo`` through the pipeline in this process into ``summary``; True when Ctrl-C stopped it."""
    stages = CaseStages(predictor, MemoryBudget.available_now(predictor.device), settings.save_probabilities,
                        settings.series_uid)
    cancel = CancelToken()
    pipeline = BatchPipeline(stages, settings.workers, cancel, this_worker())

    def stop() -> list[CaseRecord]:
        cancel.cancel()
        return pipeline.join()

    return collect(settings, todo, summary, pipeline.run(todo), stop)


def _peak_mb() -> float | None:
    peak = peak_rss_bytes()
    return round(peak / 2**20, 1) if peak is not None else None

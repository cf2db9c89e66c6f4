"""``tilewise batch``: every case of a folder through one loaded model, pipelined, resumable and fault-tolerant.

Finished cases are skipped (without loading the model when nothing is left to do), a failing case is recorded
with its reason while the others run, and Ctrl-C stops at once, keeping the finished outputs and leaving nothing
half-written. ``OUT_DIR/batch_summary.json`` lists every case. Exit status: 0 when every case succeeded (or was
finished earlier), 3 when some failed, 130 when interrupted. With ``--ray`` the cases run on Ray actors instead
(:mod:`tilewise.engine.distributed`), with the same skipping, records, summary and exit status.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from ..batch.cases import (
    BatchCase,
    case_outputs,
    collect_batch_cases,
    is_finished,
    shard,
)
from ..batch.pipeline import BatchPipeline
from ..batch.records import FAILED, INTERRUPTED, CaseRecord, now_iso, this_worker
from ..batch.stages import CaseStages
from ..batch.summary import (
    BatchProgress,
    BatchSummary,
    earlier_records,
    predictor_header,
    skipped_record,
    summary_path,
)
from ..data.outputs import with_output_type
from ..data.safe_output import refuse_overwriting_inputs
from ..errors import InputError
from ..events import CancelToken
from ..model.bundle import dataset_channel_count, resolve_model_dir
from ..predictor import Predictor
from ..presets import Preset
from ..runtime.memory import peak_rss_bytes
from ..runtime.memory_plan import MemoryBudget
from .options import preset_from_args

EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


def _header(args: argparse.Namespace, predictor: Predictor | None) -> dict:
    header: dict = {"tool": "tilewise batch", "input": str(args.input), "output": str(args.output),
                    "model": str(args.model), "preset": args.preset, "part_id": args.part_id,
                    "num_parts": args.num_parts, "workers": args.workers, "started": now_iso()}
    if predictor is not None:
        header.update(predictor_header(predictor))
    return header


def _plan(args: argparse.Namespace) -> tuple[list[BatchCase], Path]:
    """This part's cases and its summary's path, after refusing any output that would land on an input."""
    cases = collect_batch_cases(args.input, args.output, dataset_channel_count(args.model))
    typed = with_output_type([case.case for case in cases], args.output_type)
    cases = [replace(case, case=output) for case, output in zip(cases, typed)]
    cases = shard(cases, args.num_parts, args.part_id)
    summary = summary_path(args.output, args.num_parts, args.part_id)
    outputs = [path for case in cases for path in case_outputs(case.case, args.save_probabilities)]
    refuse_overwriting_inputs([*outputs, summary], [path for case in cases for path in case.case.inputs])
    return cases, summary


def run_batch(args: argparse.Namespace) -> int:
    """Run the batch command; returns the exit status."""
    preset = preset_from_args(args)
    if args.workers < 1:
        raise InputError("--workers", f"must be 1 or more (got {args.workers})")
    if args.ray is not None:  # actors run in other folders, maybe on other machines: every path absolute
        from ..distributed.cluster import import_ray

        import_ray()  # without the extra, say so before anything else
        args.input, args.output = args.input.resolve(), args.output.resolve()
        args.model = str(resolve_model_dir(args.model).resolve())
    cases, path = _plan(args)
    earlier = earlier_records(path)
    todo = [case for case in cases if args.overwrite or not is_finished(case.case, args.save_probabilities)]
    running = {case.name for case in todo}
    skipped = [skipped_record(case, args.save_probabilities, earlier.get(case.name))
               for case in cases if case.name not in running]
    predictor = None
    if todo and args.ray is None:  # a run over a finished folder loads no model
        predictor = Predictor(args.model, preset, device=args.device, folds=args.folds,
                              checkpoint_name=args.checkpoint, trust=args.trust_model,
                              nnunet_exact=args.nnunet_exact)
    summary = BatchSummary(path, _header(args, predictor))
    for record in skipped:
        summary.add(record)
    if args.verbose and not args.quiet and predictor is not None:
        print(f"tilewise: {len(todo)} of {len(cases)} case(s) to run on {summary.header['backend']}, "
              f"{args.workers} worker(s)", file=sys.stderr)
    interrupted = False
    if predictor is not None:
        interrupted = _run_here(args, predictor, todo, summary)
    elif todo:
        interrupted = _run_on_ray(args, preset, todo, summary, len(cases))
    summary.save(finished=not interrupted, peak_rss_mb=_peak_mb())
    failed, done = summary.count(FAILED), len(todo) - summary.count(FAILED) - summary.count(INTERRUPTED)
    if not args.quiet:
        state = "interrupted" if interrupted else "finished"
        print(f"tilewise: batch {state}: {done} done, {failed} failed, {len(skipped)} skipped (finished earlier) "
              f"in {summary.elapsed:.1f}s; summary: {path}", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if failed else 0


def _run_here(args: argparse.Namespace, predictor: Predictor, todo: list[BatchCase], summary: BatchSummary) -> bool:
    """Run ``todo`` through the pipeline in this process into ``summary``; True when Ctrl-C stopped it."""
    stages = CaseStages(predictor, MemoryBudget.available_now(predictor.device), args.save_probabilities,
                        args.series_uid)
    cancel = CancelToken()
    pipeline = BatchPipeline(stages, args.workers, cancel, this_worker())

    def stop() -> list[CaseRecord]:
        cancel.cancel()
        return pipeline.join()

    return _collect(args, todo, summary, pipeline.run(todo), stop)


def _run_on_ray(args: argparse.Namespace, preset: Preset, todo: list[BatchCase], summary: BatchSummary,
                total: int) -> bool:
    """Run ``todo`` on Ray actors into ``summary``; True when Ctrl-C stopped it."""
    from ..distributed.driver import (
        start_ray_batch,  # Ray only when asked for: it is an optional extra
    )

    batch = start_ray_batch(args, preset)
    try:
        summary.header["ray"] = batch.describe()
        if args.verbose and not args.quiet:
            print(f"tilewise: {len(todo)} of {total} case(s) to run on Ray at {batch.connection.address}: "
                  f"{batch.plan.describe()}", file=sys.stderr)
        return _collect(args, todo, summary, batch.run(todo), batch.stop)
    finally:
        summary.header.update(batch.model_info)
        batch.close()


def _collect(args: argparse.Namespace, todo: list[BatchCase], summary: BatchSummary, records: Iterator[CaseRecord],
             stop: Callable[[], list[CaseRecord]]) -> bool:
    """Add ``records`` to ``summary`` with the progress bar; on Ctrl-C, ``stop()`` and add the records it returns,
    and mark every case without a record interrupted. True when interrupted."""
    bar = not args.disable_progress_bar and sys.stderr.isatty()
    progress = BatchProgress(len(todo), bar, args.quiet, args.verbose)
    seen: set[str] = set()
    interrupted = False
    try:
        for record in records:
            seen.add(record.case)
            summary.add(record)
            progress.update(record)
    except KeyboardInterrupt:
        interrupted = True
        progress.write("tilewise: interrupted; finishing the file being written, nothing half-written is kept")
        for record in stop():
            seen.add(record.case)
            summary.add(record)
    finally:
        progress.close()
    for case in todo:
        if case.name not in seen:
            summary.add(CaseRecord.for_case(case, INTERRUPTED, args.save_probabilities, "the batch was interrupted"))
    return interrupted


def _peak_mb() -> float | None:
    peak = peak_rss_bytes()
    return round(peak / 2**20, 1) if peak is not None else None

"""``tilewise predict -m totalseg:<task>``: a TotalSegmentator task on every case of an input, its models loaded once
(:class:`~tilewise.engine.task_predictor.TaskPredictor`); labels written as ``tilewise predict`` writes them, and with
``--statistics`` TotalSegmentator's statistics next to them (``<case>_statistics.json``)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..batch.settings import UNCERTAINTY_FOR_TASKS
from ..data.cases import Case, collect_cases, planned_outputs
from ..data.dicom.seg import AlgorithmInfo
from ..data.outputs import check_dicom_references, with_output_type, write_json, write_output
from ..data.readers import read_volume
from ..data.safe_output import refuse_overwriting_inputs
from ..errors import TilewiseError
from ..model.totalseg import TaskSpec, resolve_task, task_name
from ..runtime.devices import describe_device
from ..task_predictor import TaskPredictor
from .options import preset_from_args


def statistics_path(case: Case) -> Path:
    """Where ``--statistics`` writes a case's statistics: ``<case>_statistics.json`` next to its labels."""
    return case.output.parent / f"{case.name}_statistics.json"


def task_spec(args: argparse.Namespace) -> TaskSpec:
    """The task ``-m`` names with ``--fast`` and ``--roi_subset``; refuses what a task run cannot do."""
    name = task_name(args.model)
    assert name is not None
    if getattr(args, "save_probabilities", False):
        raise TilewiseError("--save_probabilities", "is not available for TotalSegmentator tasks (their models' "
                                                    "probabilities are not one map)")
    if getattr(args, "save_uncertainty", False):
        raise TilewiseError("--save_uncertainty", UNCERTAINTY_FOR_TASKS)
    if getattr(args, "prev_stage_predictions", None) is not None:
        raise TilewiseError("-prev_stage_predictions", "is for a 3d_cascade_fullres model, not a TotalSegmentator task")
    return resolve_task(name, bool(getattr(args, "fast", False)), getattr(args, "roi_subset", None))


def task_cases(args: argparse.Namespace) -> list[Case]:
    """The cases of ``-i`` (one image each) with their outputs."""
    cases = collect_cases(Path(args.input), Path(args.output), 1, args.channels)
    return with_output_type(cases, args.output_type)


def task_outputs(args: argparse.Namespace, cases: list[Case]) -> list[Path]:
    """Every file the run writes: labels, statistics, the report."""
    statistics = [statistics_path(case) for case in cases] if args.statistics else []
    return planned_outputs(cases, False, args.report) + statistics


def _plain(statistics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """TotalSegmentator's statistics with numpy numbers as plain floats (its JSON keys unchanged)."""
    return {name: {key: float(value) for key, value in values.items()} for name, values in statistics.items()}


def run_task_predict(args: argparse.Namespace, started: float, progress: Any) -> int:
    """``tilewise predict`` for ``-m totalseg:<task>``; ``progress`` is predict's tile progress bar."""
    spec = task_spec(args)
    preset = preset_from_args(args)
    cases = task_cases(args)
    refuse_overwriting_inputs(task_outputs(args, cases), [path for case in cases for path in case.inputs])
    if args.continue_prediction:
        cases = [c for c in cases if not c.output.exists()]
    # One case: each part's model loaded as its part runs (the peak is one model's, as in TotalSegmentator); several:
    # all of them once, for every case.
    predictor = TaskPredictor(spec, preset, device=args.device, folds=args.folds, step=args.step_size,
                              trust=args.trust_model, nnunet_exact=args.nnunet_exact,
                              one_model_at_a_time=len(cases) == 1)
    quiet, settings = args.quiet, predictor.settings
    algorithm = AlgorithmInfo(model_name=spec.model_name, folds=tuple(settings.folds), preset=preset.name)
    if args.verbose and not quiet:
        print(f"task {spec.model_name}: {len(predictor.model_folders)} model(s), step {settings.tile_step}, "
              f"{settings.precision}, device {settings.device}, backend {predictor.backend_description}",
              file=sys.stderr)
    report_cases = []
    for number, case in enumerate(cases, 1):
        read_started = time.perf_counter()
        volume = read_volume(list(case.inputs), series_uid=args.series_uid)
        check_dicom_references(case.output, volume.dicom_files)
        read = time.perf_counter() - read_started
        progress.start(f"[{number}/{len(cases)}] {case.name}")
        try:
            result = predictor.predict(volume, on_event=progress, statistics=args.statistics)
        finally:
            progress.close()
        write_started = time.perf_counter()
        write_output(result.labels, result.geometry, volume.dicom_files, result.label_names, algorithm, case.output,
                     args.seg_type)
        if result.statistics is not None:
            write_json(statistics_path(case), _plain(result.statistics))
        timings = {"read": read, **result.timings, "write": time.perf_counter() - write_started}
        for note in result.notes:
            print(f"tilewise: note: {case.name}: {note}", file=sys.stderr)
        if args.verbose and not quiet:
            line = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
            print(f"{case.name}: {result.tiles} tiles; {line}", file=sys.stderr)
        report_cases.append({"case": case.name, "output": str(case.output), "tiles": result.tiles,
                             "forward_passes": result.forward_passes, "timings": timings, "notes": result.notes})
    total = time.perf_counter() - started
    if not quiet:
        print(f"tilewise: {len(cases)} case(s) written to {args.output} in {total:.1f}s ({spec.model_name}, "
              f"{predictor.backend_description})", file=sys.stderr)
    if args.report is not None:
        write_json(args.report, {
            "model": spec.model_name, "task": spec.name, "fast": spec.fast, "roi_subset": spec.roi_subset,
            "models": [str(folder) for folder in predictor.model_folders], "preset": preset.name,
            "folds": settings.folds, "tile_step": settings.tile_step,
            "precision": settings.precision, "device": str(settings.device),
            "device_name": describe_device(settings.device), "backend": settings.backend,
            "load_s": predictor.load_seconds, "total_s": total, "cases": report_cases,
        })
    return 0

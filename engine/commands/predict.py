"""``tilewise predict``: segment every case of an input and write labels next to nothing half-done."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..batch.stages import CaseStages, InFlight
from ..data.cases import Case, collect_cases, planned_outputs
from ..data.outputs import with_output_type, write_json
from ..data.safe_output import refuse_overwriting_inputs
from ..data.uncertainty_file import uncertainty_path, uncertainty_paths
from ..events import TileEvent
from ..model.bundle import dataset_channel_count
from ..model.totalseg import task_name
from ..postprocess.uncertainty import UNCERTAIN_THRESHOLD, uncertain_volume_ml
from ..predictor import Predictor, Result
from ..runtime.devices import describe_device
from ..runtime.memory import peak_rss_bytes
from ..runtime.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt
from .options import preset_from_args


class _Progress:
    """A per-case tqdm bar on the terminal, fed by tile events."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def start(self, label: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=0, desc=label, unit="tile", file=sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, event: TileEvent) -> None:
        if self._bar is not None:
            self._bar.total = event.total
            self._bar.update(event.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _uncertainty_report(case: Case, result: Result, quiet: bool) -> dict[str, Any]:
    """With ``--save_uncertainty``: the case's uncertain volume, printed (unless ``quiet``) and for the report."""
    if result.uncertainty is None:
        return {}
    volume = uncertain_volume_ml(result.uncertainty, result.geometry)
    if not quiet:
        print(f"tilewise: {case.name}: uncertain volume {volume:.2f} mL (uncertainty {UNCERTAIN_THRESHOLD} or more)",
              file=sys.stderr)
    return {"uncertainty_output": str(uncertainty_path(case)), "uncertain_volume_ml": round(volume, 3)}


def run_predict(args: argparse.Namespace) -> int:
    """Run the predict command; returns the exit status. SIGTERM stops it as Ctrl-C does (the file being written is
    dropped, nothing half-written is kept) with exit status 143."""
    with sigterm_as_interrupt():
        try:
            return _predict(args)
        except Terminated:
            print("tilewise: terminated (SIGTERM); no partial output was written", file=sys.stderr)
            return EXIT_TERMINATED


def _predict(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if task_name(args.model) is not None:  # a TotalSegmentator task: several nnU-Net models as one
        from .predict_task import run_task_predict

        return run_task_predict(args, started, _Progress(not args.quiet and not args.disable_progress_bar
                                                         and sys.stderr.isatty()))
    preset = preset_from_args(args)
    output_dir = Path(args.output)
    # Cases and their outputs first: a job that would write over one of its inputs is refused before any work.
    cases = collect_cases(Path(args.input), output_dir, dataset_channel_count(args.model), args.channels)
    cases = with_output_type(cases, args.output_type)
    refuse_overwriting_inputs(planned_outputs(cases, args.save_probabilities, args.report)
                              + uncertainty_paths(cases, args.save_uncertainty),
                              [path for case in cases for path in case.inputs])
    predictor = Predictor(args.model, preset, device=args.device, folds=args.folds,
                          checkpoint_name=args.checkpoint, trust=args.trust_model, nnunet_exact=args.nnunet_exact,
                          run_previous_stage=args.prev_stage_predictions is None)
    if args.continue_prediction:  # a case is done when its labels (and its uncertainty map, when asked) are there
        cases = [c for c in cases if not all(path.exists() for path in [c.output, *uncertainty_paths([c],
                                                                                              args.save_uncertainty)])]
    quiet = args.quiet
    show_bar = not quiet and not args.disable_progress_bar and sys.stderr.isatty()
    settings = predictor.settings
    backend = predictor.backend.describe()
    if args.verbose and not quiet:
        print(f"model {predictor.bundle.path} ({predictor.bundle.configuration_name}), folds {settings.folds}, "
              f"mirror axes {settings.mirror_axes}, step {settings.tile_step}, {settings.precision}, "
              f"batch {settings.batch_size}, device {settings.device}, backend {backend}", file=sys.stderr)
    progress = _Progress(show_bar)
    stages = CaseStages(predictor, None, args.save_probabilities, args.series_uid, on_event=progress,
                        seg_type=args.seg_type, prev_stage_predictions=args.prev_stage_predictions,
                        with_uncertainty=args.save_uncertainty)
    report_cases = []
    for number, case in enumerate(cases, 1):
        item = InFlight(case)
        stages.run_stage("read", item, None)  # also refuses a DICOM output the input cannot be referenced by
        progress.start(f"[{number}/{len(cases)}] {case.name}")
        try:
            for stage in ("preprocess", "sliding_window", "export"):
                stages.run_stage(stage, item, None)
        finally:
            progress.close()
        stages.run_stage("write", item, None)
        result = item.result
        assert result is not None
        timings = {"read": item.timings["read"],
                   **{k: v for k, v in result.timings.items() if k not in ("load", "convert")},
                   "write": item.timings["write"]}
        for note in result.notes:
            print(f"tilewise: note: {case.name}: {note}", file=sys.stderr)
        if args.verbose and not quiet:
            line = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
            print(f"{case.name}: {result.tiles} tiles, {result.forward_passes} passes; {line}", file=sys.stderr)
        written = peak_rss_bytes()
        peaks = {**result.peak_rss_mb, **({"write": round(written / 2**20, 1)} if written is not None else {})}
        report_cases.append({"case": case.name, "output": str(case.output), "tiles": result.tiles,
                             "tiles_skipped": result.tiles_skipped, "forward_passes": result.forward_passes,
                             "timings": timings, "notes": result.notes, "peak_rss_mb": peaks,
                             **_uncertainty_report(case, result, quiet)})
    total = time.perf_counter() - started
    backend_notes = list(getattr(predictor.backend, "notes", []))  # e.g. a first run that converted the model
    if not quiet:
        for note in backend_notes:
            print(f"tilewise: note: {note}", file=sys.stderr)
        print(f"tilewise: {len(cases)} case(s) written to {output_dir} in {total:.1f}s ({backend})", file=sys.stderr)
    if args.report is not None:
        write_json(args.report, {
            "model": str(predictor.bundle.path), "configuration": predictor.bundle.configuration_name,
            "preset": preset.name, "folds": settings.folds, "mirror_axes": list(settings.mirror_axes),
            "tile_step": settings.tile_step, "precision": settings.precision, "batch_size": settings.batch_size,
            "device": str(settings.device), "device_name": describe_device(settings.device),
            "backend": settings.backend, "backend_description": backend, "backend_notes": backend_notes,
            "load_s": predictor.load_seconds, "convert_s": predictor.convert_seconds, "total_s": total,
            "cases": report_cases,
        })
    return 0

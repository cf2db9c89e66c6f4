"""``tilewise bench``: our engine against nnU-Net's own predictor, same input, same settings, one run."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk

from ..data.cases import collect_cases
from ..errors import TilewiseError
from ..model.bundle import ModelBundle
from .bench_rates import NNUNET_ENTRY, NNUNET_TIMINGS_VARIABLE, nnunet_rates, ours_rates
from .metrics import dice_per_label
from .options import preset_from_args
from .process_memory import run_timed


def _stage_input(source: Path, bundle: ModelBundle, folder: Path) -> list[Path]:
    """Copy the case into ``folder`` with nnU-Net's naming and the dataset's file ending (both tools read it)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = collect_cases(source, folder / "unused", bundle.image_channel_count)
    if len(cases) != 1:
        raise TilewiseError(source, f"bench takes one case, found {len(cases)}")
    staged = []
    for channel, path in enumerate(cases[0].inputs):
        target = folder / f"case_{channel:04d}{bundle.file_ending}"
        sitk.WriteImage(sitk.ReadImage(str(path)), str(target), True)
        staged.append(target)
    return staged


def _ours_command(args: argparse.Namespace, model_dir: Path, staged: Path, out: Path, report: Path) -> list[str]:
    command = [sys.executable, "-m", "tilewise.engine", "predict", "-i", str(staged), "-o", str(out),
               "-m", str(model_dir), "--preset", args.preset, "-device", args.device, "--report", str(report), "-q"]
    for flag, value in (("-step_size", args.step_size), ("--precision", args.precision),
                        ("--batch-size", args.batch_size), ("-chk", args.checkpoint), ("--backend", args.backend)):
        if value is not None:
            command += [flag, str(value)]
    if args.folds:
        command += ["-f", *args.folds]
    if args.disable_tta:
        command.append("--disable_tta")
    if args.trust_model:
        command.append("--trust-model")
    if args.nnunet_exact:
        command.append("--nnunet-exact")
    return command


def _nnunet_command(args: argparse.Namespace, report: dict, model_dir: Path, staged: Path, out: Path,
                    device: str) -> list[str]:
    command = [sys.executable, "-c", NNUNET_ENTRY, "-i", str(staged), "-o", str(out), "-m", str(model_dir),
               "-f", *report["folds"], "-step_size", str(report["tile_step"]), "-device", device,
               "--disable_progress_bar"]
    if not report["mirror_axes"]:
        command.append("--disable_tta")
    if args.checkpoint:
        command += ["-chk", args.checkpoint]
    return command


@contextlib.contextmanager
def bench_workdir(requested: str | None, prefix: str) -> Iterator[Path]:
    """The folder a bench stages its input and both tools' outputs in: ``requested`` (kept), or a temporary one
    removed afterwards."""
    workdir = Path(requested or tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if requested is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run_bench(args: argparse.Namespace) -> int:
    """Run the bench command; prints a table and, as the last line, one JSON object."""
    preset = preset_from_args(args)
    bundle = ModelBundle.load(args.model, folds=args.folds, checkpoint_name=args.checkpoint, trust=args.trust_model,
                              fold_count=preset.fold_count)
    with bench_workdir(args.workdir, "tilewise-bench-") as workdir:
        staged = _stage_input(Path(args.input), bundle, workdir / "input")
        ours_out, report_path = workdir / "tilewise", workdir / "tilewise-report.json"
        ours = run_timed(_ours_command(args, bundle.path, staged[0].parent, ours_out, report_path))
        if ours.returncode != 0:
            raise TilewiseError("tilewise predict", f"failed: {ours.stderr.strip().splitlines()[-1] if ours.stderr.strip() else ours.returncode}")
        report = json.loads(report_path.read_text())
        case = report["cases"][0]
        summary: dict = {
            "preset": preset.name, "nnunet_exact": bool(args.nnunet_exact), "device": report["device"], "device_name": report["device_name"],
            "precision": report["precision"], "backend": report["backend"],
            "backend_description": report["backend_description"], "backend_notes": report["backend_notes"],
            "folds": report["folds"], "mirroring": bool(report["mirror_axes"]), "tile_step": report["tile_step"],
            "batch_size": report["batch_size"], "tiles": case["tiles"], "forward_passes": case["forward_passes"],
            "tiles_per_s": case["tiles"] / max(case["timings"]["sliding_window"], 1e-9),
            "ours_s": round(ours.seconds, 2), "ours_peak_mb": round(ours.peak_mb),
            "ours_peak_single_process_mb": round(ours.peak_single_mb),
            "ours_peak_rss_mb_by_stage": case.get("peak_rss_mb", {}),
            "stages_s": {"load": round(report["load_s"], 2), **{k: round(v, 2) for k, v in case["timings"].items()}},
        }
        summary.update(ours_rates(bundle, report, case))
        _print_ours(summary)
        if args.against == "nnunet":
            nnunet_out, nnunet_timings = workdir / "nnunet", workdir / "nnunet-sliding-window.txt"
            device = "cpu" if report["device"] == "cpu" else "cuda" if report["device"].startswith("cuda") else report["device"]
            theirs = run_timed(_nnunet_command(args, report, bundle.path, staged[0].parent, nnunet_out, device),
                               env={**os.environ, NNUNET_TIMINGS_VARIABLE: str(nnunet_timings)})
            summary["nnunet_finished"] = theirs.returncode == 0
            if theirs.returncode != 0:  # a job nnU-Net cannot finish is a result too (e.g. its export runs out of memory)
                lines = [line for line in theirs.stderr.strip().splitlines() if line.strip()]
                summary.update({"nnunet_s": round(theirs.seconds, 2), "nnunet_peak_mb": round(theirs.peak_mb),
                                "nnunet_returncode": theirs.returncode, "nnunet_error": lines[-1][:300] if lines else ""})
                print(f"nnU-Net    did not finish: exit {theirs.returncode} after {theirs.seconds:.1f}s, peak "
                      f"{summary['nnunet_peak_mb']} MB (all processes): {summary['nnunet_error']}")
                print(json.dumps(summary))
                return 0
            ours_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ours_out / f"case{bundle.file_ending}")))
            their_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(nnunet_out / f"case{bundle.file_ending}")))
            dice = dice_per_label(ours_labels, their_labels)
            agreement = float((ours_labels == their_labels).mean())
            summary.update({
                "nnunet_s": round(theirs.seconds, 2), "nnunet_peak_mb": round(theirs.peak_mb),
                "nnunet_peak_single_process_mb": round(theirs.peak_single_mb),
                "nnunet_precision": "fp16 autocast" if device.startswith("cuda") else "fp32",
                "speedup": round(theirs.seconds / ours.seconds, 3), "dice": {str(k): round(v, 5) for k, v in dice.items()},
                "dice_min": round(min(dice.values()), 5) if dice else 1.0, "voxel_agreement": round(agreement, 6),
            })
            sliding = [float(line) for line in nnunet_timings.read_text().split()] if nnunet_timings.exists() else []
            summary.update(nnunet_rates(summary, case, device, sliding))
            _print_against(summary)
        print(json.dumps(summary))
    return 0


def _print_ours(summary: dict) -> None:
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in summary["stages_s"].items())
    print(f"settings   preset {summary['preset']}, folds {','.join(summary['folds'])}, mirroring "
          f"{'on' if summary['mirroring'] else 'off'}, step {summary['tile_step']}, {summary['precision']}, "
          f"batch {summary['batch_size']}, device {summary['device_name']}, backend {summary['backend_description']}")
    print(f"tilewise   {summary['ours_s']:.2f}s end-to-end, peak {summary['ours_peak_mb']} MB, "
          f"{summary['tiles']} tiles ({summary['tiles_per_s']:.2f}/s), {summary['forward_passes']} forward passes")
    print(f"  stages   {stages}")
    if "ours_gflops_per_s" in summary:
        print(f"  compute  {summary['gflop_per_forward_pass']:.2f} GFLOP per forward pass; sliding window "
              f"{summary['ours_gflops_per_s']:.1f} GFLOP/s = {summary['ours_share_of_peak']:.0%} of this machine's "
              f"measured convolution peak ({summary['ours_peak_gflops_per_s']:.0f} GFLOP/s, {summary['processor']})")
    for note in summary["backend_notes"]:  # e.g. a first run that converted the model: its load time includes that
        print(f"  note     {note}")


def _print_against(summary: dict) -> None:
    dice = "  ".join(f"{k}: {v:.4f}" for k, v in summary["dice"].items())
    print(f"nnU-Net    {summary['nnunet_s']:.2f}s end-to-end, peak {summary['nnunet_peak_mb']} MB (all processes) "
          f"({summary['nnunet_precision']})")
    if "nnunet_gflops_per_s" in summary:
        print(f"  compute  sliding window {summary['nnunet_gflops_per_s']:.1f} GFLOP/s = "
              f"{summary['nnunet_share_of_peak']:.0%} of the measured peak ({summary['nnunet_peak_gflops_per_s']:.0f} "
              f"GFLOP/s for PyTorch in its precision)")
    print(f"speed-up   {summary['speedup']:.2f}x    Dice per label  {dice}    voxel agreement "
          f"{summary['voxel_agreement']:.5f}")

"""``tilewise bench -m totalseg:TASK [--against totalsegmentator]``: a TotalSegmentator task end to end in Tilewise
and in TotalSegmentator's own command, on the same image with the same settings, in one run.

Both run as separate processes from a cold start (imports, model loading, resampling, every part, writing the
label map), timed by wall clock with the peak memory summed over each process and its children
(TotalSegmentator's nnU-Net spawns preprocessing and export workers). TotalSegmentator runs with its defaults for
the task (its tile step, fold 0, no mirroring, one multi-label file); Tilewise with the same models, step and folds
at the preset asked for (``reference``: nnU-Net's sums in float32 where TotalSegmentator's nnU-Net sums in float16).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import TilewiseError
from ..model.totalseg import TASK_PREFIX
from .bench import bench_workdir
from .metrics import dice_per_label
from .predict_task import task_spec
from .process_memory import Timed, run_timed

TOTALSEGMENTATOR_ENTRY = ("import sys; sys.argv[0] = 'TotalSegmentator'; "
                          "from totalsegmentator.bin.TotalSegmentator import main; sys.exit(main())")
"""TotalSegmentator's ``TotalSegmentator`` console command, run by this Python (the one its package is installed
in), as its console script runs it."""


def _stage_input(source: Path, folder: Path) -> Path:
    """The image as one NIfTI file both tools read (TotalSegmentator takes a NIfTI file or a DICOM folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not source.is_file():
        raise TilewiseError(source, "bench of a TotalSegmentator task takes one image file")
    staged = folder / "case_0000.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(source)), str(staged), True)
    return staged


def _ours_command(args: argparse.Namespace, image: Path, out: Path, report: Path) -> list[str]:
    command = [sys.executable, "-m", "tilewise.engine", "predict", "-i", str(image), "-o", str(out),
               "-m", str(args.model), "--preset", args.preset, "-device", args.device, "--report", str(report), "-q"]
    for flag, value in (("-step_size", args.step_size), ("--precision", args.precision),
                        ("--batch-size", args.batch_size), ("--backend", args.backend)):
        if value is not None:
            command += [flag, str(value)]
    if args.folds:
        command += ["-f", *args.folds]
    for flag, on in (("--fast", args.fast), ("--statistics", args.statistics), ("--trust-model", args.trust_model),
                     ("--nnunet-exact", args.nnunet_exact)):
        if on:
            command.append(flag)
    if args.roi_subset:
        command += ["--roi_subset", *args.roi_subset]
    return command


def totalsegmentator_device(device: str) -> str:
    """TotalSegmentator's ``-d`` for the device Tilewise ran on: 'cpu', 'gpu' or 'gpu:N' (its names for CUDA)."""
    if device.startswith("cuda"):
        return "gpu" + device[len("cuda"):]
    return device


def _theirs_command(args: argparse.Namespace, task: str, image: Path, out: Path, device: str) -> list[str]:
    command = [sys.executable, "-c", TOTALSEGMENTATOR_ENTRY, "-i", str(image), "-o", str(out), "--ml",
               "-ta", task, "-d", device, "-q"]
    if args.fast:
        command.append("--fast")
    if args.roi_subset:
        command += ["--roi_subset", *args.roi_subset]
    if args.statistics:
        command.append("--statistics")  # TotalSegmentator writes statistics.json next to its label map
    return command


def _failure(timed: Timed) -> str:
    """The line that says why a command failed: its last unindented stderr line (a warning's indented source line
    or a traceback's frames are not the reason)."""
    lines = [line for line in timed.stderr.splitlines() if line.strip() and not line[0].isspace()]
    return lines[-1][:300] if lines else f"exit {timed.returncode}"


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _ours_summary(args: argparse.Namespace, ours: Timed, report: dict) -> dict:
    case = report["cases"][0]
    return {
        "model": report["model"], "task": report["task"], "fast": report["fast"], "roi_subset": report["roi_subset"],
        "models": len(report["models"]), "preset": report["preset"], "nnunet_exact": bool(args.nnunet_exact),
        "device": report["device"], "device_name": report["device_name"], "precision": report["precision"],
        "backend": report["backend"], "folds": report["folds"], "tile_step": report["tile_step"],
        "tiles": case["tiles"], "forward_passes": case["forward_passes"],
        "ours_s": round(ours.seconds, 2), "ours_peak_mb": round(ours.peak_mb),
        "ours_peak_single_process_mb": round(ours.peak_single_mb),
        "stages_s": {"load": round(report["load_s"], 2), **{k: round(v, 2) for k, v in case["timings"].items()}},
    }


def run_bench_task(args: argparse.Namespace) -> int:
    """Bench a TotalSegmentator task (``-m totalseg:TASK``); prints a table and, as the last line, one JSON object."""
    spec = task_spec(args)
    if args.against not in (None, "totalsegmentator"):
        raise TilewiseError("--against", f"a TotalSegmentator task is compared with TotalSegmentator "
                                         f"(--against totalsegmentator), not with {args.against}")
    with bench_workdir(args.workdir, "tilewise-bench-task-") as workdir:
        image = _stage_input(Path(args.input), workdir / "input")
        ours_out, report_path = workdir / "tilewise", workdir / "tilewise-report.json"
        ours = run_timed(_ours_command(args, image, ours_out, report_path))
        if ours.returncode != 0:
            raise TilewiseError("tilewise predict", f"failed: {_failure(ours)}")
        report = json.loads(report_path.read_text())
        summary = _ours_summary(args, ours, report)
        _print_ours(summary)
        if args.against == "totalsegmentator":
            theirs_out = workdir / "totalsegmentator" / "case.nii.gz"
            theirs_out.parent.mkdir(parents=True, exist_ok=True)
            device = totalsegmentator_device(report["device"])
            theirs = run_timed(_theirs_command(args, spec.name, image, theirs_out, device))
            summary.update({"totalsegmentator_s": round(theirs.seconds, 2),
                            "totalsegmentator_peak_mb": round(theirs.peak_mb),
                            "totalsegmentator_peak_single_process_mb": round(theirs.peak_single_mb),
                            "totalsegmentator_finished": theirs.returncode == 0})
            if theirs.returncode != 0:  # a job TotalSegmentator cannot finish is a result too (e.g. out of memory)
                summary.update({"totalsegmentator_returncode": theirs.returncode,
                                "totalsegmentator_error": _failure(theirs)})
                print(f"TotalSeg.  did not finish: exit {theirs.returncode} after {theirs.seconds:.1f}s, peak "
                      f"{summary['totalsegmentator_peak_mb']} MB (all processes): {summary['totalsegmentator_error']}")
                print(json.dumps(summary))
                return 0
            ours_labels, their_labels = _labels(ours_out / "case.nii.gz"), _labels(theirs_out)
            dice = dice_per_label(ours_labels, their_labels)
            summary.update({
                "speedup": round(theirs.seconds / ours.seconds, 3),
                "memory_ratio": round(ours.peak_mb / max(theirs.peak_mb, 1e-9), 3),
                "voxel_agreement": round(float((ours_labels == their_labels).mean()), 6),
                "dice_min": round(min(dice.values()), 5) if dice else 1.0,
                "structures": len(dice), "dice": {str(k): round(v, 5) for k, v in dice.items()},
            })
            _print_against(summary)
        print(json.dumps(summary))
    return 0


def _print_ours(summary: dict) -> None:
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in summary["stages_s"].items())
    print(f"settings   {TASK_PREFIX}{summary['task']}{' --fast' if summary['fast'] else ''} "
          f"({summary['models']} model(s)), preset {summary['preset']}, folds {','.join(summary['folds'])}, "
          f"step {summary['tile_step']}, {summary['precision']}, device {summary['device_name']}, "
          f"backend {summary['backend']}")
    print(f"tilewise   {summary['ours_s']:.2f}s end-to-end, peak {summary['ours_peak_mb']} MB, "
          f"{summary['tiles']} tiles, {summary['forward_passes']} forward passes")
    print(f"  stages   {stages}")


def _print_against(summary: dict) -> None:
    print(f"TotalSeg.  {summary['totalsegmentator_s']:.2f}s end-to-end, peak {summary['totalsegmentator_peak_mb']} MB "
          f"(all processes)")
    print(f"speed-up   {summary['speedup']:.2f}x    memory {summary['memory_ratio']:.2f}x TotalSegmentator's    "
          f"voxel agreement {summary['voxel_agreement']:.5f}    lowest Dice {summary['dice_min']:.4f} "
          f"over {summary['structures']} structures")

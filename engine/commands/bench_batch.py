"""``tilewise bench --batch``: cases per minute of ``tilewise batch`` against ``nnUNetv2_predict_from_modelfolder``
(its default worker pools) on the same folder and settings, end to end as a user waits for them (process start,
model load, every case read, segmented and written), then a resume of our batch over the finished folder."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import SimpleITK as sitk

from ..batch.cases import collect_batch_cases
from ..data.readers import image_suffix
from ..errors import InputError, TilewiseError
from ..model.bundle import ModelBundle
from .bench import _nnunet_command, _ours_command, bench_workdir
from .metrics import dice_per_label
from .options import preset_from_args
from .process_memory import Timed, run_timed


def _stage_folder(source: Path, bundle: ModelBundle, folder: Path) -> list[str]:
    """The cases of ``source`` in ``folder`` with nnU-Net's naming and the dataset's file ending (both tools read
    this folder); the case names, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = collect_batch_cases(source, folder / "unused", bundle.image_channel_count)
    names = []
    for batch_case in cases:
        case = batch_case.case
        if batch_case.problem is not None:
            raise InputError(case.inputs[0], batch_case.problem)
        if any(path.is_dir() or image_suffix(path) is None for path in case.inputs):
            raise InputError(case.inputs[0], "bench --batch takes image files (nnU-Net reads no DICOM)")
        for channel, path in enumerate(case.inputs):
            target = folder / f"{case.name}_{channel:04d}{bundle.file_ending}"
            if image_suffix(path) == bundle.file_ending:
                shutil.copyfile(path, target)
            else:
                sitk.WriteImage(sitk.ReadImage(str(path)), str(target), True)
        names.append(case.name)
    return sorted(names)


def _batch_command(args: argparse.Namespace, model_dir: Path, staged: Path, out: Path) -> list[str]:
    """``tilewise batch`` with the bench's settings (the flags ``tilewise bench`` passes to ``predict``)."""
    command = _ours_command(args, model_dir, staged, out, out / "unused-report.json")
    command[command.index("predict")] = "batch"
    at = command.index("--report")
    del command[at:at + 2]
    return [*command, "--workers", str(args.workers)]


def _compare(names: list[str], ending: str, ours: Path, theirs: Path) -> dict:
    """Per-label Dice (the lowest over cases) and voxel agreement (the lowest) of both tools' labels."""
    dice_min, agreement_min = 1.0, 1.0
    for name in names:
        mine = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"{name}{ending}")))
        other = sitk.GetArrayFromImage(sitk.ReadImage(str(theirs / f"{name}{ending}")))
        dice = dice_per_label(mine, other)
        dice_min = min([dice_min, *dice.values()])
        agreement_min = min(agreement_min, float((mine == other).mean()))
    return {"dice_min": round(dice_min, 5), "voxel_agreement_min": round(agreement_min, 6)}


def _per_min(cases: int, run: Timed) -> float:
    return round(cases * 60.0 / max(run.seconds, 1e-9), 3)


def run_bench_batch(args: argparse.Namespace) -> int:
    """Run ``tilewise bench --batch``; prints a table and, as the last line, one JSON object."""
    if args.nnunet_exact:
        raise TilewiseError("--nnunet-exact", "bench --batch compares with nnU-Net at the preset's settings; "
                                              "leave --nnunet-exact out")
    preset = preset_from_args(args)
    bundle = ModelBundle.load(args.model, folds=args.folds, checkpoint_name=args.checkpoint, trust=args.trust_model,
                              fold_count=preset.fold_count)
    with bench_workdir(args.workdir, "tilewise-bench-batch-") as workdir:
        staged = workdir / "input"
        names = _stage_folder(Path(args.input), bundle, staged)
        ours_out, nnunet_out = workdir / "tilewise", workdir / "nnunet"
        command = _batch_command(args, bundle.path, staged, ours_out)
        ours = run_timed(command)
        if ours.returncode != 0:
            lines = ours.stderr.strip().splitlines()
            raise TilewiseError("tilewise batch", f"failed: {lines[-1] if lines else ours.returncode}")
        summary_file = json.loads((ours_out / "batch_summary.json").read_text(encoding="utf-8"))
        resume = run_timed(command)  # loads no model: every case is finished
        records = [r for r in summary_file["cases"] if r["status"] == "done"]
        window = [r["timings"].get("sliding_window", 0.0) for r in records]
        report = {"folds": summary_file["folds"], "tile_step": summary_file["tile_step"],
                  "mirror_axes": summary_file["mirror_axes"]}
        device = summary_file["device"]
        nnunet_device = "cpu" if device == "cpu" else "cuda" if device.startswith("cuda") else device
        theirs = run_timed(_nnunet_command(args, report, bundle.path, staged, nnunet_out, nnunet_device))
        result: dict = {
            "cases": len(names), "preset": preset.name, "folds": report["folds"],
            "mirroring": bool(report["mirror_axes"]), "tile_step": report["tile_step"],
            "precision": summary_file["precision"], "backend": summary_file["backend"],
            "device_name": summary_file["device_name"], "workers": args.workers,
            "ours_s": round(ours.seconds, 2), "ours_peak_mb": round(ours.peak_mb),
            "ours_cases_per_min": _per_min(len(names), ours),
            "resume_s": round(resume.seconds, 2),
            "sliding_window_s_per_case": round(sum(window) / max(len(window), 1), 3),
            "nnunet_finished": theirs.returncode == 0,
            "nnunet_s": round(theirs.seconds, 2), "nnunet_peak_mb": round(theirs.peak_mb),
            "nnunet_cases_per_min": _per_min(len(names), theirs) if theirs.returncode == 0 else 0.0,
        }
        result["speedup"] = round(theirs.seconds / max(ours.seconds, 1e-9), 3) if theirs.returncode == 0 else None
        if theirs.returncode == 0:
            result.update(_compare(names, bundle.file_ending, ours_out, nnunet_out))
        _print_table(result)
        print(json.dumps(result))
    return 0


def _print_table(result: dict) -> None:
    print(f"settings   {result['cases']} cases, preset {result['preset']}, folds {','.join(result['folds'])}, "
          f"mirroring {'on' if result['mirroring'] else 'off'}, step {result['tile_step']}, {result['precision']}, "
          f"device {result['device_name']}, backend {result['backend']}, workers {result['workers']}")
    print(f"tilewise   {result['ours_s']:.1f}s, {result['ours_cases_per_min']:.2f} cases/min, peak "
          f"{result['ours_peak_mb']} MB (all processes); sliding window {result['sliding_window_s_per_case']:.2f}s "
          f"per case; resume over the finished folder {result['resume_s']:.1f}s")
    if not result["nnunet_finished"]:
        print(f"nnU-Net    did not finish after {result['nnunet_s']:.1f}s")
        return
    print(f"nnU-Net    {result['nnunet_s']:.1f}s, {result['nnunet_cases_per_min']:.2f} cases/min, peak "
          f"{result['nnunet_peak_mb']} MB (all processes)")
    print(f"speed-up   {result['speedup']:.2f}x    lowest Dice {result['dice_min']:.4f}    lowest voxel agreement "
          f"{result['voxel_agreement_min']:.5f}")


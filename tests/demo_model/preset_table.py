"""What each preset costs and keeps, on the demo model: the README's preset table.

``python tests/demo_model/preset_table.py --raw RAW`` predicts the sample volume and every held-out case
(``RAW/Dataset950_TilewiseDemoBrain/imagesTs``) with each preset through ``tilewise.engine.Predictor`` on this
machine's CPU. Per preset it reports the mean predict time per case, tiles and forward passes, the speed-up against
``reference``, the Dice against the ``reference`` output and against the derived labels (mean over grey matter,
white matter and CSF) and per label against the derived labels of the held-out cases. It also times ``tilewise predict -m demo --preset preview`` on the sample end to end, and
prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from evaluate import dice  # noqa: E402
from make_dataset import DATASET_NAME, LABELS  # noqa: E402

PRESETS = ("reference", "balanced", "fast", "preview")


def mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean Dice over the foreground labels."""
    return float(np.nanmean([dice(pred, ref, v) for v in LABELS.values() if v]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, required=True, help="nnUNet_raw folder written by make_dataset.py")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from tilewise.engine import Predictor, get_preset, read_volume
    from tilewise.resources import sample_path

    folder = args.raw / DATASET_NAME
    cases = {"sample": (sample_path(), None)}
    for image in sorted((folder / "imagesTs").glob("*_0000.nii.gz")):
        name = image.name[: -len("_0000.nii.gz")]
        cases[name] = (image, sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTs" / f"{name}.nii.gz"))))
    volumes = {name: read_volume(path) for name, (path, _) in cases.items()}

    outputs: dict[str, dict[str, np.ndarray]] = {}
    rows = []
    for preset_name in PRESETS:
        predictor = Predictor("demo", get_preset(preset_name), device=args.device)
        seconds, tiles, passes = [], [], []
        outputs[preset_name] = {}
        for name, volume in volumes.items():
            started = time.perf_counter()
            result = predictor.predict(volume)
            seconds.append(time.perf_counter() - started)
            tiles.append(result.tiles)
            passes.append(result.forward_passes)
            outputs[preset_name][name] = result.labels
        versus_reference = [mean_dice(outputs[preset_name][n], outputs["reference"][n]) for n in volumes]
        per_label = {label: float(np.nanmean([dice(outputs[preset_name][n], ref, value)
                                               for n, (_, ref) in cases.items() if ref is not None]))
                     for label, value in LABELS.items() if value}
        rows.append({"preset": preset_name, "settings": predictor.settings, "seconds": float(np.mean(seconds)),
                     "sample_seconds": seconds[0], "tiles": float(np.mean(tiles)), "passes": float(np.mean(passes)),
                     "dice_reference": float(np.mean(versus_reference)),
                     "dice_labels": per_label})
        print(f"{preset_name}: {rows[-1]}", flush=True)

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tilewise.engine", "predict", "-i", str(sample_path()), "-o", out,
                        "-m", "demo", "--preset", "preview", "-device", args.device, "-q"], check=True)
        preview_cli = time.perf_counter() - started

    reference_seconds = rows[0]["seconds"]
    print("\n| preset | folds / mirroring / step / precision | tiles (forward passes) per case | time per case "
          "| speed-up vs reference | Dice vs reference output | Dice vs derived labels: "
          + ", ".join(name for name, value in LABELS.items() if value) + " |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        s = row["settings"]
        print(f"| `{row['preset']}` | {len(s.folds)} / {'on' if s.mirror_axes else 'off'} / {s.tile_step} / "
              f"{s.precision} | {row['tiles']:.0f} ({row['passes']:.0f}) | {row['seconds']:.2f} s | "
              f"{reference_seconds / row['seconds']:.1f}x | {row['dice_reference']:.3f} | "
              + " / ".join(f"{d:.3f}" for d in row["dice_labels"].values()) + " |")
    print(f"\n`tilewise predict -m demo --preset preview` on the sample, end to end: {preview_cli:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

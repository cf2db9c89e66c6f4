"""Time saved by skipping empty tiles, and what it costs in Dice: ``python tests/bench_tile_skipping.py [--ct CASE -m MODEL]``.

Two volumes with much empty space around the body:
- the demo sample placed in a 1.6x wider field of view whose background carries scanner-like noise (so nnU-Net's
  crop to nonzero keeps all of it, as for an MR that was not skull-stripped); Dice is measured against the demo
  model's ``reference`` output on the same volume;
- optionally a CT-like case (``--ct``, e.g. the bench case from ``tests/make_bench_model.py``) padded with air
  (-1000 HU) on two sides. Dice is measured inside the original field of view against the ``reference`` output and
  against the same preset without skipping (its model has random weights, so the presets' own reduced precision
  and missing mirroring already move nearly tied voxels; the second number isolates what skipping costs).
Prints one JSON line per run. Not part of the test suite (timing claims belong in benchmarks).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from tilewise.engine import Predictor, get_preset, read_volume  # noqa: E402
from tilewise.engine.commands.metrics import dice_per_label  # noqa: E402
from tilewise.resources import demo_model_dir, sample_path  # noqa: E402


def widened(source: Path, target: Path, factor: float, fill: float, noise: float) -> tuple[slice, ...]:
    """``source`` centred in a field of view ``factor`` times wider in y and x; returns where it lies (z, y, x)."""
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    shape = (array.shape[0], *(int(round(s * factor)) for s in array.shape[1:]))
    rng = np.random.default_rng(0)
    big = np.abs(fill + rng.normal(0, noise, shape)).astype(np.float32) if fill >= 0 else \
        (fill + rng.normal(0, noise, shape)).astype(np.float32)
    box = tuple(slice((b - s) // 2, (b - s) // 2 + s) for b, s in zip(shape, array.shape))
    big[box] = array
    out = sitk.GetImageFromArray(big)
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(image.GetDirection())
    out.SetOrigin(image.GetOrigin())
    sitk.WriteImage(out, str(target))
    return box


def run(model: Path, case: Path, preset_name: str, skip: bool, device: str) -> tuple[np.ndarray, dict]:
    """One prediction; returns the labels and a summary."""
    preset = get_preset(preset_name).with_overrides(skip_empty_tiles=skip)
    predictor = Predictor(model, preset, device=device)
    volume = read_volume(case)
    started = time.perf_counter()
    result = predictor.predict(volume)
    total = time.perf_counter() - started
    return result.labels, {"preset": preset_name, "skip_empty_tiles": skip, "tiles_run": result.tiles,
                           "tiles_skipped": result.tiles_skipped, "sliding_window_s": result.timings["sliding_window"],
                           "predict_s": total, "backend": predictor.backend.describe()}


def dice_summary(labels: np.ndarray, reference: np.ndarray, values: list[int]) -> dict[str, float]:
    """Dice per label value, rounded."""
    return {str(v): round(d, 4) for v, d in dice_per_label(labels, reference, values).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=None, help="CT-like case to pad with air")
    parser.add_argument("-m", dest="model", type=Path, default=None, help="model for --ct")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tw-skip-"))

    mr = work / "sample_wide.nii.gz"
    widened(sample_path(), mr, 1.6, fill=0.0, noise=8.0)
    reference, summary = run(demo_model_dir(), mr, "reference", False, args.device)
    print(json.dumps({"case": "demo sample, 1.6x field of view", **summary}), flush=True)
    for preset in ("fast", "preview"):
        for skip in (False, True):
            labels, summary = run(demo_model_dir(), mr, preset, skip, args.device)
            print(json.dumps({"case": "demo sample, 1.6x field of view", **summary,
                              "dice_vs_reference": dice_summary(labels, reference, [1, 2, 3])}), flush=True)

    if args.ct is not None and args.model is not None:
        ct = work / "ct_wide.nii.gz"
        box = widened(args.ct, ct, 1.6, fill=-1000.0, noise=12.0)
        reference, summary = run(args.model, ct, "reference", False, args.device)
        print(json.dumps({"case": "CT-like, 1.6x field of view", **summary}), flush=True)
        for preset in ("fast", "preview"):
            full, summary_full = run(args.model, ct, preset, False, args.device)
            print(json.dumps({"case": "CT-like, 1.6x field of view", **summary_full,
                              "dice_vs_reference_in_body_box": dice_summary(full[box], reference[box], [1, 2])}),
                  flush=True)
            skipped, summary = run(args.model, ct, preset, True, args.device)
            print(json.dumps({"case": "CT-like, 1.6x field of view", **summary,
                              "dice_vs_reference_in_body_box": dice_summary(skipped[box], reference[box], [1, 2]),
                              "dice_vs_no_skip_in_body_box": dice_summary(skipped[box], full[box], [1, 2])}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

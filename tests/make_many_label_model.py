"""Build the "large, many-label model" benchmark: ``python tests/make_many_label_model.py OUT_DIR``.

A TotalSegmentator-class model and CT, made from nnU-Net's own plans (not used by the test suite):

* ``OUT_DIR/many_label/...__3d_fullres``: the benchmark network that nnU-Net's default planner makes
  (``make_bench_model.py``: PlainConvUNet, features 32 -> 320, five stages) with 104 labels plus background,
  re-planned at 3 mm isotropic with a 64^3 patch; seeded random weights, fold_0;
* ``OUT_DIR/hopeless/...__3d_fullres``: the same model re-planned at 0.5 mm (hundreds of GB of logit sums on the CT);
* ``OUT_DIR/replanned_1_5mm/...__3d_fullres``: the same model re-planned at 1.5 mm (about 45 GB of float32 sums on
  the long CT: a job only a streaming window fits);
* ``OUT_DIR/ct/ct_0000.nii.gz``: a CT-like case of 512 x 512 x 300 voxels at 0.78 x 0.78 x 1.5 mm (int16);
* ``OUT_DIR/ct80/ct80_0000.nii.gz``: its central 80 slices (a case nnU-Net's own CLI finishes on 24 GB);
* ``OUT_DIR/ct1500/ct1500_0000.nii.gz``: the CT five times along z, 512 x 512 x 1,500 (a whole-body-length case).

Benchmark (README, "Large, many-label models")::

    tilewise bench -m OUT_DIR/many_label/M -i OUT_DIR/ct80/ct80_0000.nii.gz -f 0 --disable_tta -step_size 0.5 \\
        --precision fp32 --backend torch -device cpu --against nnunet
    tilewise bench -m OUT_DIR/many_label/M -i OUT_DIR/ct/ct_0000.nii.gz -f 0 --disable_tta -step_size 0.5 -device cpu
    tilewise predict -m OUT_DIR/hopeless/M -i OUT_DIR/ct/ct_0000.nii.gz -o /tmp/out -f 0 --disable_tta -device cpu
    tilewise predict -m OUT_DIR/many_label/M -i OUT_DIR/ct1500/ct1500_0000.nii.gz -o /tmp/out --preset balanced
    tilewise predict -m OUT_DIR/replanned_1_5mm/M -i OUT_DIR/ct1500/ct1500_0000.nii.gz -o /tmp/out --preset balanced
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

import model_factory as mf  # noqa: E402

LABELS = 104
CT_SHAPE = (300, 512, 512)  # numpy (z, y, x)
CT_SPACING = (0.78, 0.78, 1.5)  # SimpleITK (x, y, z), mm
CROP_SLICES = 80
LONG_REPEATS = 5


def replanned(plans: dict, spacing: float, patch: int) -> dict:
    """The bench plans with 3d_fullres at ``spacing`` mm isotropic and a ``patch``^3 tile (same network)."""
    plans = copy.deepcopy(plans)
    configuration = plans["configurations"]["3d_fullres"]
    configuration["spacing"] = [spacing] * 3
    configuration["patch_size"] = [patch] * 3
    strides = configuration["architecture"]["arch_kwargs"]["strides"]
    if patch % int(np.prod([s[0] for s in strides])):
        raise ValueError(f"patch {patch} is not divisible by the network's total stride")
    plans["plans_name"] = plans.get("plans_name", "nnUNetPlans")
    return plans


def many_labels(dataset_json: dict) -> dict:
    """dataset.json with background and ``LABELS`` structures."""
    dataset_json = copy.deepcopy(dataset_json)
    dataset_json["labels"] = {"background": 0, **{f"structure_{i:03d}": i for i in range(1, LABELS + 1)}}
    dataset_json["name"] = "ManyLabelCT"
    return dataset_json


def decisive_weights(plans: dict, dataset_json: dict, seed: int) -> dict:
    """nnU-Net's network for these plans, seeded, with the output layers scaled so that logits are far apart (a
    random network otherwise predicts near-ties everywhere, which no float rounding leaves alone)."""
    net = mf._build_network(plans, dataset_json, "3d_fullres", seed)
    with torch.no_grad():
        for layer in mf._seg_layers(net):
            layer.weight.mul_(25.0)
    return {k: v.half() for k, v in net.state_dict().items()}


def write_model(folder: Path, plans: dict, dataset_json: dict, fingerprint: dict, weights: dict) -> Path:
    target = folder / "nnUNet_results" / "Dataset990_ManyLabelCT" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if not target.is_dir():
        mf._write_model_folder(target, plans, dataset_json, fingerprint, "3d_fullres", {0: weights},
                               "checkpoint_final.pth", 0, momentum_buffers=False)
    return target


def write_cases(out: Path) -> tuple[Path, Path, Path]:
    full = out / "ct" / "ct_0000.nii.gz"
    crop = out / "ct80" / "ct80_0000.nii.gz"
    long = out / "ct1500" / "ct1500_0000.nii.gz"
    if not full.is_file():
        full.parent.mkdir(parents=True, exist_ok=True)
        mf.make_case(full, "bench", shape=CT_SHAPE, spacing=CT_SPACING, seed=7)
    if not crop.is_file():
        crop.parent.mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(str(full))
        start = (CT_SHAPE[0] - CROP_SLICES) // 2
        sitk.WriteImage(image[:, :, start:start + CROP_SLICES], str(crop), True)
    if not long.is_file():
        long.parent.mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(str(full))
        repeated = sitk.GetImageFromArray(np.concatenate([sitk.GetArrayFromImage(image)] * LONG_REPEATS))
        repeated.SetSpacing(image.GetSpacing())
        repeated.SetOrigin(image.GetOrigin())
        repeated.SetDirection(image.GetDirection())
        sitk.WriteImage(repeated, str(long), True)
    return full, crop, long


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = args.out_dir.resolve()
    bench_model, _ = mf.make_bench_model(out / "bench", seed=args.seed)
    plans = json.loads((bench_model / "plans.json").read_text())
    dataset_json = many_labels(json.loads((bench_model / "dataset.json").read_text()))
    fingerprint = json.loads((bench_model / "dataset_fingerprint.json").read_text())
    coarse = replanned(plans, 3.0, 64)
    weights = decisive_weights(coarse, dataset_json, args.seed)
    model = write_model(out / "many_label", coarse, dataset_json, fingerprint, weights)
    hopeless = write_model(out / "hopeless", replanned(plans, 0.5, 64), dataset_json, fingerprint, weights)
    mid = write_model(out / "replanned_1_5mm", replanned(plans, 1.5, 64), dataset_json, fingerprint, weights)
    full, crop, long = write_cases(out)
    print(f"model     {model}\nhopeless  {hopeless}\n1.5 mm    {mid}\nct        {full}\nct80      {crop}\n"
          f"ct1500    {long}\nbuilt in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

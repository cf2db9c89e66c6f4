"""Export of many-label logits with and without the labels-only shortcut (``postprocess/agreement.py``):
``python tests/bench_agreement_export.py MODEL_FOLDER CT``.

MODEL_FOLDER: the 105-output 3 mm model of ``tests/make_many_label_model.py``; CT: its 512 x 512 x 300 case. The
model's random weights give labels that change at nearly every network voxel, which a trained network's do not, so
the logits here are made the way a trained network's look: 104 blob-shaped organs (the nearest of 104 seeds within
30 mm) inside an elliptic body outline, each head's logit the organ's smoothed indicator at a trained network's scale,
plus a little noise. Both exports run on the same logits and the CT's own preprocessing properties; the labels must
be equal voxel for voxel. Prints one JSON line per export (seconds, best of ``--repeats``; the share of voxels the
shortcut decided). Not part of the test suite (timing claims belong in benchmarks).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tilewise.engine import read_volume
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.postprocess import export as export_module
from tilewise.engine.postprocess.export import export_logits
from tilewise.engine.preprocess.pipeline import preprocess


def organ_logits(heads: int, grid: tuple[int, ...], spacing_mm: float) -> torch.Tensor:
    """(heads, *grid) float32: background outside an elliptic body, ``heads - 1`` blob organs inside it."""
    rng = np.random.default_rng(0)
    z, y, x = grid
    seeds = np.zeros(grid, np.int32)
    points = np.stack([rng.integers(0, z, heads - 1), rng.integers(y // 5, 4 * y // 5, heads - 1),
                       rng.integers(x // 8, 7 * x // 8, heads - 1)], 1)
    seeds[tuple(points.T)] = np.arange(1, heads)
    distance, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing_mm, return_indices=True)
    labels = seeds[tuple(nearest)]
    _, yy, xx = np.ogrid[:1, :y, :x]
    outside = ((yy - y / 2) / (0.39 * y)) ** 2 + ((xx - x / 2) / (0.47 * x)) ** 2 >= 1
    labels[(distance > 30) | outside] = 0
    logits = np.empty((heads, *grid), np.float32)
    for head in range(heads):
        logits[head] = ndimage.gaussian_filter((labels == head).astype(np.float32), sigma=1.0) * 20
    logits += rng.normal(scale=0.3, size=logits.shape).astype(np.float32)
    return torch.from_numpy(logits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("ct", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle = ModelBundle.load(args.model)
    prepared = preprocess(read_volume([args.ct]), bundle, with_nonzero_mask=False)
    grid = tuple(prepared.data[(0, *prepared.unpadded)].shape)
    heads = int(bundle.label_manager.num_segmentation_heads)
    logits = organ_logits(heads, grid, float(bundle.configuration_manager.spacing[0]))
    shortcut = export_module.LabelSink.agreement
    results = {}
    for name, agreement in (("full export", lambda sink, resampler: None), ("labels-only shortcut", shortcut)):
        export_module.LabelSink.agreement = agreement
        used: list = []
        if name != "full export":
            export_module.LabelSink.agreement = lambda sink, r: used.append(shortcut(sink, r)) or used[-1]
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            results[name] = export_logits(logits, bundle, prepared.properties).labels
            best = min(best, time.perf_counter() - started)
        line = {"export": name, "heads": heads, "network_grid": list(grid), "seconds": round(best, 2),
                "threads": torch.get_num_threads()}
        if used and used[0] is not None:
            decided, boundary = used[0].decided_voxels, used[0].boundary_voxels
            line["decided_share"] = round(decided / max(1, decided + boundary), 4)
            line["declined_rows"] = used[0].declined_rows
        print(json.dumps(line), flush=True)
    export_module.LabelSink.agreement = shortcut
    differ = int((results["full export"] != results["labels-only shortcut"]).sum())
    print(json.dumps({"voxels": int(results["full export"].size), "differ": differ}), flush=True)
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

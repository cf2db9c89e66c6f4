"""Tilewise against TotalSegmentator on stand-in weights (not part of the test suite): time and agreement.

    python tests/bench_totalseg.py [WORKDIR] [--shape Z Y X] [--tasks total total_fast ...]

Builds the stand-in weights of :mod:`totalseg_factory` (tiny networks: the times are the tools' overheads and
steps around nnU-Net more than forward passes) and a CT-like image, then for each task runs, once warm:

* TotalSegmentator as shipped (``totalsegmentator(...)``: nnU-Net's spawned preprocessing and export processes,
  float16 sums), and TotalSegmentator with its nnU-Net run in-process and float32 sums (the tests' reference);
* Tilewise's ``reference`` preset (torch, CPU) and ``--nnunet-exact``, each as load (the task's models) + predict.

Prints one JSON line per task: seconds and the share of voxels each Tilewise run shares with each TotalSegmentator run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import totalseg_factory as tf
from totalseg_reference import run_totalsegmentator

TASKS = {"total": ("ct", {"task": "total"}), "total_fast": ("ct", {"task": "total", "fast": True}),
         "total_mr": ("mr", {"task": "total_mr"}), "roi_subset": ("ct", {"task": "total", "roi_subset": ["liver"]}),
         "liver_vessels": ("ct", {"task": "liver_vessels"})}


def _tilewise(image: Path, weights: Path, settings: dict, exact: bool) -> tuple[np.ndarray, float, float]:
    from tilewise.engine import get_preset, read_volume
    from tilewise.engine.model.totalseg import resolve_task
    from tilewise.engine.task_predictor import TaskPredictor

    started = time.perf_counter()
    predictor = TaskPredictor(resolve_task(settings["task"], settings.get("fast", False),
                                           settings.get("roi_subset"), root=weights),
                              get_preset("reference").with_overrides(backend="torch"), device="cpu",
                              nnunet_exact=exact)
    loaded = time.perf_counter()
    labels = predictor.predict(read_volume([image])).labels
    return labels, loaded - started, time.perf_counter() - loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-bench-ts")
    parser.add_argument("--shape", nargs=3, type=int, default=[120, 160, 160], help="numpy (z, y, x) of the image")
    parser.add_argument("--spacing", nargs=3, type=float, default=[1.0, 1.0, 2.0], help="SimpleITK (x, y, z) mm")
    parser.add_argument("--tasks", nargs="+", default=["total_fast", "total", "roi_subset", "liver_vessels"])
    args = parser.parse_args()
    standins = tf.standins(args.workdir)
    shape, spacing = tuple(args.shape), tuple(args.spacing)
    images = {"ct": tf.make_ct(args.workdir / f"ct_{'x'.join(map(str, shape))}.nii.gz", shape=shape, spacing=spacing),
              "mr": tf.make_mr(args.workdir / f"mr_{'x'.join(map(str, shape))}.nii.gz", shape=shape, spacing=spacing)}
    run_totalsegmentator(standins.ct, standins.weights, standins.home, task="total", fast=True)  # imports, warm
    _tilewise(standins.ct, standins.weights, {"task": "total", "fast": True}, False)
    for name in args.tasks:
        kind, settings = TASKS[name]
        image = images[kind]
        timed = {}
        started = time.perf_counter()
        stock, _ = run_totalsegmentator(image, standins.weights, standins.home, float32_sums=False, sequential=False,
                                        **settings)
        timed["totalsegmentator_s"] = time.perf_counter() - started
        started = time.perf_counter()
        float32, _ = run_totalsegmentator(image, standins.weights, standins.home, **settings)
        timed["totalsegmentator_float32_in_process_s"] = time.perf_counter() - started
        reference, timed["tilewise_load_s"], timed["tilewise_predict_s"] = _tilewise(image, standins.weights,
                                                                                     settings, False)
        exact, timed["tilewise_exact_load_s"], timed["tilewise_exact_predict_s"] = _tilewise(
            image, standins.weights, settings, True)
        print(json.dumps({
            "task": name, "image": list(shape), "spacing": list(spacing), "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0], **{k: round(v, 2) for k, v in timed.items()},
            "reference_vs_float32": float((reference == float32).mean()),
            "reference_vs_stock": float((reference == stock).mean()),
            "exact_vs_stock": float((exact == stock).mean()),
            "float32_vs_stock": float((float32 == stock).mean()),
            "structures": int(len(np.unique(stock)) - 1)}), flush=True)


if __name__ == "__main__":
    main()

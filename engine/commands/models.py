"""``tilewise models``: list the trained nnU-Net models in the usual places (or the folders given), and
TotalSegmentator's installed tasks by the name ``-m`` takes."""
from __future__ import annotations

import argparse
import os

from ..model.catalog import default_search_roots, find_models, totalsegmentator_root
from ..model.totalseg import totalsegmentator_installed
from ..model.totalseg_catalog import installed_tasks, task_model_folders


def run_models(args: argparse.Namespace) -> int:
    """List models found in the given folders (or the default places); in the default places TotalSegmentator's
    weights are listed as its tasks (``totalseg:total``), not as their nnU-Net folders."""
    roots = list(args.folders) or default_search_roots()
    weights = totalsegmentator_root()
    tasks = [] if args.folders else installed_tasks(weights)
    hidden = task_model_folders(weights) if tasks else set()
    models = [info for info in find_models(roots) if info.path.resolve() not in hidden]
    if not models and not tasks:
        print(f"no nnU-Net models found under {', '.join(str(r) for r in roots)}")
        if not args.folders:
            results = os.environ.get("nnUNet_results")
            print(f"Tilewise looks in $nnUNet_results ({results if results else 'not set'}) and in TotalSegmentator's "
                  "results folder. To use a model elsewhere: 'tilewise models FOLDER' searches FOLDER, "
                  "'tilewise predict -m MODEL_FOLDER ...' uses one, and '-m demo' is the bundled demo model.")
        return 0
    for info in models:
        labels = ", ".join(k for k in info.labels if k != "background")
        print(f"{info.path}\n  dataset {info.dataset}, configuration {info.configuration}, folds "
              f"{','.join(info.folds)}, channels {', '.join(info.channels)}, labels {labels}")
    if tasks:
        print(f"TotalSegmentator tasks (weights in {weights}; run with -m NAME, --fast, --roi_subset):")
        for task in tasks:
            print(f"  {task.name}: {task.describe()}")
    elif not args.folders and any(str(info.path).startswith(str(weights)) for info in models) \
            and not totalsegmentator_installed():
        print("TotalSegmentator's weights are installed: to run its tasks (-m totalseg:total), "
              "pip install \"tilewise[totalseg]\"")
    return 0

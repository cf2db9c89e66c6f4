"""``tilewise models``: list the trained nnU-Net models in the usual places (or the folders given)."""
from __future__ import annotations

import argparse
import os

from ..model.catalog import default_search_roots, find_models


def run_models(args: argparse.Namespace) -> int:
    """List models found in the given folders (or the default places)."""
    roots = list(args.folders) or default_search_roots()
    models = find_models(roots)
    if not models:
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
    return 0

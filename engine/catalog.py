"""Finding trained nnU-Net models on disk (``tilewise models`` and the viewer's model list)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .model import available_folds

TOTALSEGMENTATOR_RESULTS = Path.home() / ".totalsegmentator" / "nnunet" / "results"


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder offers, read without loading any checkpoint."""

    path: Path
    dataset: str
    configuration: str
    folds: list[str]
    labels: dict[str, object]
    channels: list[str]


def default_search_roots() -> list[Path]:
    """``$nnUNet_results`` (if set) and TotalSegmentator's default results folder."""
    roots = [Path(os.environ["nnUNet_results"])] if os.environ.get("nnUNet_results") else []
    return roots + [TOTALSEGMENTATOR_RESULTS]


def describe_model(folder: Path) -> ModelInfo | None:
    """Summary of a trained-model folder, or None if ``folder`` is not one."""
    try:
        dataset = json.loads((folder / "dataset.json").read_text())
        json.loads((folder / "plans.json").read_text())
        folds = available_folds(folder)
    except (OSError, ValueError):
        return None
    if not folds:
        return None
    parts = folder.name.split("__")
    configuration = parts[-1] if len(parts) == 3 else "?"
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    return ModelInfo(folder, str(dataset.get("name") or folder.parent.name), configuration, folds,
                     dict(dataset.get("labels", {})), [str(channels[k]) for k in sorted(channels, key=int)])


def find_models(roots: list[Path], max_depth: int = 4) -> list[ModelInfo]:
    """Every trained-model folder under ``roots`` (searched up to ``max_depth`` levels), sorted by path."""
    found: list[ModelInfo] = []
    for root in roots:
        if not root.is_dir():
            continue
        base_depth = len(root.parts)
        for current, subdirs, files in os.walk(root):
            if len(Path(current).parts) - base_depth >= max_depth:
                subdirs.clear()
            if "plans.json" in files and "dataset.json" in files:
                info = describe_model(Path(current))
                if info is not None:
                    found.append(info)
                subdirs[:] = [d for d in subdirs if not d.startswith("fold_")]
    return sorted(found, key=lambda m: str(m.path))


def run_models(args: argparse.Namespace) -> int:
    """List models found in the given folders (or the default places)."""
    roots = list(args.folders) or default_search_roots()
    models = find_models(roots)
    if not models:
        print(f"no nnU-Net models found under {', '.join(str(r) for r in roots)}")
        return 0
    for info in models:
        labels = ", ".join(k for k in info.labels if k != "background")
        print(f"{info.path}\n  dataset {info.dataset}, configuration {info.configuration}, folds "
              f"{','.join(info.folds)}, channels {', '.join(info.channels)}, labels {labels}")
    return 0

"""Finding trained nnU-Net models on disk (``tilewise models`` and the viewer's model list)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .bundle import available_folds
from .labels import label_names
from .totalseg import weights_dir

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
    label_names: dict[int, str]
    """Output label value -> name, background included (the engine's one rule)."""


def default_search_roots() -> list[Path]:
    """``$nnUNet_results`` (if set) and TotalSegmentator's weights folder (``$TOTALSEG_WEIGHTS_PATH`` or
    ``$TOTALSEG_HOME_DIR``'s when set, else its default :data:`TOTALSEGMENTATOR_RESULTS`)."""
    roots = [Path(os.environ["nnUNet_results"])] if os.environ.get("nnUNet_results") else []
    return roots + [totalsegmentator_root()]


def totalsegmentator_root() -> Path:
    """TotalSegmentator's weights folder as the model lists search it."""
    configured = os.environ.get("TOTALSEG_WEIGHTS_PATH") or os.environ.get("TOTALSEG_HOME_DIR")
    return weights_dir() if configured else TOTALSEGMENTATOR_RESULTS


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
                     dict(dataset.get("labels", {})), [str(channels[k]) for k in sorted(channels, key=int)],
                     label_names(dataset))


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



"""What a prediction returns (:class:`Result`) and the settings it ran with (:class:`RunSettings`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.volume import Geometry


@dataclass
class Result:
    """Labels on the input grid (z, y, x) with the input's geometry, plus what the run cost."""

    labels: np.ndarray | None
    """None when the labels went straight to a file slab by slab (:attr:`labels_file`)."""
    geometry: Geometry
    probabilities: np.ndarray | None
    properties: dict[str, Any]
    timings: dict[str, float]
    """Seconds: load (the model's, once per predictor), convert (of load, converting models for the backend: 0 for
    torch or when cached), preprocess, sliding_window, export. A cascade adds its first stage's, named after it
    (``3d_lowres:preprocess``, ``3d_lowres:sliding_window``, ``3d_lowres:export``) and ``3d_lowres:to_input`` (its
    segmentation resampled and stacked onto the full-res input); the unprefixed ones are the full-res stage's."""
    tiles: int
    """Tiles run (both stages' for a cascade)."""
    forward_passes: int
    tiles_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    """This process's peak resident memory at the end of each stage (cumulative; empty where the OS does not say)."""
    uncertainty: np.ndarray | None = None
    """When asked for (``with_uncertainty``): how unsure the model is at each voxel, uint8 percent on the input grid
    (z, y, x, like :attr:`labels`): 0 = certain, 100 = the two most likely classes tie (see
    :mod:`~tilewise.engine.postprocess.uncertainty`); 0 outside nnU-Net's crop."""
    labels_file: Path | None = None
    """The label file a streaming case's export wrote slab by slab and published whole (``PreparedCase.labels_path``,
    set by ``tilewise predict`` and ``batch``); :attr:`labels` is then None."""


@dataclass(frozen=True)
class RunSettings:
    """A preset resolved for one model and device: concrete folds, mirror axes, precision and batch size."""

    folds: list[str]
    mirror_axes: tuple[int, ...]
    tile_step: float
    precision: str
    batch_size: int
    device: torch.device
    skip_empty_tiles: bool = False
    backend: str = "torch"

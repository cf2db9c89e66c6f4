"""How long a run will take, before it starts: tile count x passes per tile x measured time per forward pass.

The viewer shows these estimates next to each preset. The tile count comes from the image's shape and spacing
(nnU-Net's resampling and sliding-window rules, without touching the voxels); the time per forward pass is measured
once per model, device and precision with a real pass through the model's network, and refined from finished runs.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .predictor import Predictor
from .preprocess.grid_shape import ModelGrid, network_grid_shape, nonzero_extent
from .presets import Preset

__all__ = ["OVERHEAD_S_PER_MVOXEL", "Estimate", "ModelGrid", "count_tiles", "estimate_run", "network_grid_shape",
           "nonzero_extent", "passes_per_tile", "time_forward_pass"]

OVERHEAD_S_PER_MVOXEL = 0.16
"""Preprocessing + export seconds per million voxels of the image's nonzero box, until a run has measured it:
``tilewise --self-test`` on the 2-core CPU (demo sample: 0.50-0.59 s + 0.16-0.17 s for a 160 x 188 x 152 box)."""


def count_tiles(grid: ModelGrid, grid_shape: Sequence[int], tile_step: float) -> int:
    """Tiles nnU-Net's sliding window places on ``grid_shape`` at ``tile_step``."""
    patch = grid.patch_size
    spatial = list(grid_shape[1:]) if len(patch) == 2 else list(grid_shape)
    tiles = math.prod(_steps(n, p, tile_step) for n, p in zip(spatial, patch))
    return tiles * (int(grid_shape[0]) if len(patch) == 2 else 1)


def _steps(size: int, patch: int, step: float) -> int:
    """nnU-Net's ``compute_steps_for_sliding_window`` count along one axis."""
    return int(math.ceil((size - patch) / (patch * step))) + 1 if size > patch else 1


def passes_per_tile(grid: ModelGrid, mirroring: bool, fold_count: int) -> int:
    """Forward passes per tile: (1 + mirror combinations) x folds, as the engine will run them."""
    return (2 ** len(grid.mirror_axes) if mirroring else 1) * fold_count


def time_forward_pass(predictor: Predictor, repeats: int = 2) -> float:
    """Seconds for one forward pass of one tile through ``predictor``'s backend (after one warm-up pass).

    Divided by the backend's passes per tile, so a predictor with several folds or mirrors still gives the time of
    a single pass.
    """
    bundle = predictor.bundle
    patch = bundle.patch_size
    inputs = torch.randn((predictor.settings.batch_size, bundle.num_input_channels, *patch), device=predictor.device)
    best = math.inf
    with torch.inference_mode():
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            predictor.backend(inputs)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize(predictor.device)
            if attempt:
                best = min(best, time.perf_counter() - started)
    return best / predictor.settings.batch_size / predictor.backend.passes_per_tile


@dataclass(frozen=True)
class Estimate:
    """Expected run time of one preset on one image."""

    tiles: int
    passes_per_tile: int
    seconds_per_pass: float
    overhead_s: float

    @property
    def seconds(self) -> float:
        """Total: forward passes plus preprocessing and export."""
        return self.tiles * self.passes_per_tile * self.seconds_per_pass + self.overhead_s


def estimate_run(grid: ModelGrid, preset: Preset, fold_count: int, shape_zyx: Sequence[int],
                 spacing_zyx: Sequence[float], seconds_per_pass: float,
                 overhead_s_per_mvoxel: float = OVERHEAD_S_PER_MVOXEL) -> Estimate:
    """The estimate for ``preset`` with ``fold_count`` folds on an image of this shape and spacing (z, y, x), given
    the measured time per forward pass."""
    tiles = count_tiles(grid, network_grid_shape(grid, shape_zyx, spacing_zyx), preset.tile_step)
    voxels = math.prod(int(s) for s in shape_zyx)
    return Estimate(tiles, passes_per_tile(grid, preset.mirroring, fold_count), seconds_per_pass,
                    voxels / 1e6 * overhead_s_per_mvoxel)

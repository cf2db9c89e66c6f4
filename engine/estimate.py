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

from .model import ModelBundle
from .predictor import Predictor
from .presets import Preset

OVERHEAD_S_PER_MVOXEL = 0.8
"""Preprocessing + export per million input voxels before a run has measured it (2-core CPU, demo sample)."""


def network_grid_shape(bundle: ModelBundle, shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> tuple[int, ...]:
    """The padded network grid an image of this shape and spacing becomes (before nnU-Net's crop to nonzero, so an
    upper bound)."""
    transpose = [int(a) for a in bundle.plans_manager.transpose_forward]
    shape = [int(shape_zyx[a]) for a in transpose]
    spacing = [float(spacing_zyx[a]) for a in transpose]
    target = [float(s) for s in bundle.configuration_manager.spacing]
    if len(target) < 3:
        target = [spacing[0], *target]
    resampled = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target)]
    patch = bundle.patch_size if len(bundle.patch_size) == 3 else (1, *bundle.patch_size)
    return tuple(max(n, p) for n, p in zip(resampled, patch))


def count_tiles(bundle: ModelBundle, grid_shape: Sequence[int], tile_step: float) -> int:
    """Tiles nnU-Net's sliding window places on ``grid_shape`` at ``tile_step``."""
    patch = bundle.patch_size
    spatial = list(grid_shape[1:]) if len(patch) == 2 else list(grid_shape)
    tiles = math.prod(_steps(n, p, tile_step) for n, p in zip(spatial, patch))
    return tiles * (int(grid_shape[0]) if len(patch) == 2 else 1)


def _steps(size: int, patch: int, step: float) -> int:
    """nnU-Net's ``compute_steps_for_sliding_window`` count along one axis."""
    return int(math.ceil((size - patch) / (patch * step))) + 1 if size > patch else 1


def passes_per_tile(bundle: ModelBundle, mirroring: bool, fold_count: int) -> int:
    """Forward passes per tile: (1 + mirror combinations) x folds, as the engine will run them."""
    axes = [a for a in bundle.mirror_axes if a < len(bundle.patch_size)] if mirroring else []
    return (2 ** len(axes)) * fold_count


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


def estimate_run(bundle: ModelBundle, preset: Preset, fold_count: int, shape_zyx: Sequence[int],
                 spacing_zyx: Sequence[float], seconds_per_pass: float,
                 overhead_s_per_mvoxel: float = OVERHEAD_S_PER_MVOXEL) -> Estimate:
    """The estimate for ``preset`` with ``fold_count`` folds on an image of this shape and spacing (z, y, x), given
    the measured time per forward pass."""
    grid = network_grid_shape(bundle, shape_zyx, spacing_zyx)
    tiles = count_tiles(bundle, grid, preset.tile_step)
    voxels = math.prod(int(s) for s in shape_zyx)
    return Estimate(tiles, passes_per_tile(bundle, preset.mirroring, fold_count), seconds_per_pass,
                    voxels / 1e6 * overhead_s_per_mvoxel)

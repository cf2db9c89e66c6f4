"""Where tiles go and in which order they run.

Tile positions follow nnU-Net's ``compute_steps_for_sliding_window`` rule and the importance map is nnU-Net's
Gaussian, so a tile plan covers the network grid exactly as nnU-Net's predictor does. The order is ours: centre-out
by default, and a caller may reorder the tiles not yet run at any time (the viewer puts the slice on screen first).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Tile:
    """One network input: ``box`` is its (z, y, x) region in the padded network grid.

    For a 2d configuration the z extent is a single slice.
    """

    index: int
    box: Box

    @property
    def centre(self) -> tuple[float, float, float]:
        """Centre of the box in voxels of the padded network grid."""
        return tuple((s.start + s.stop - 1) / 2 for s in self.box)  # type: ignore[return-value]


def plan_tiles(padded_shape: tuple[int, int, int], patch_size: tuple[int, ...], tile_step: float) -> list[Tile]:
    """All tiles of a padded network grid, in nnU-Net's order (2d patches step over every z slice)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    if len(patch_size) == 2:
        steps = compute_steps_for_sliding_window(padded_shape[1:], patch_size, tile_step)
        boxes = [
            (slice(z, z + 1), slice(y, y + patch_size[0]), slice(x, x + patch_size[1]))
            for z in range(padded_shape[0])
            for y in steps[0]
            for x in steps[1]
        ]
    else:
        steps = compute_steps_for_sliding_window(padded_shape, patch_size, tile_step)
        boxes = [
            (slice(z, z + patch_size[0]), slice(y, y + patch_size[1]), slice(x, x + patch_size[2]))
            for z in steps[0]
            for y in steps[1]
            for x in steps[2]
        ]
    return [Tile(index=i, box=box) for i, box in enumerate(boxes)]


def gaussian_importance(patch_size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """nnU-Net's Gaussian importance map (sigma = patch / 8, peak 10, zeros clamped), in float32."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    return compute_gaussian(tuple(patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32,
                            device=device)



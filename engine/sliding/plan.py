"""Where tiles go: nnU-Net's ``compute_steps_for_sliding_window`` rule, so a tile plan covers the network grid
exactly as nnU-Net's predictor does (the order they run in is :mod:`.order`; their weights :mod:`.accumulators`)."""
from __future__ import annotations

from dataclasses import dataclass


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

"""Which tiles can be skipped: a coarse body mask on the network grid.

A tile whose input lies entirely outside the body (air around a CT, the black background of an MR, the padding
nnU-Net adds) is not worth a forward pass: the model predicts background there. The mask is nnU-Net's own nonzero
mask (what it crops to) intersected with an intensity threshold at 10 % of each channel's range, so CT air at
-1000 HU and MR background noise both count as empty. Holes are filled slice by slice (lungs and bowel gas inside
the body stay "body"), and the mask is dilated by one coarse cell so tiles that touch the skin still run.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..events import Box

CELL = 4
"""Edge of one coarse mask cell, in network-grid voxels."""
THRESHOLD = 0.1
"""A voxel is body where some channel is above its minimum plus this fraction of its (minimum .. 99th pct) range."""


class BodyMask:
    """A coarse mask (cells of :data:`CELL` voxels) answering "does this box touch the body?"."""

    def __init__(self, coarse: np.ndarray) -> None:
        self.coarse = coarse

    @property
    def fraction(self) -> float:
        """Share of coarse cells that are body."""
        return float(self.coarse.mean()) if self.coarse.size else 0.0

    def touches(self, box: Box) -> bool:
        """True if any body cell overlaps ``box`` (network-grid voxels)."""
        cells = tuple(slice(s.start // CELL, -(-s.stop // CELL)) for s in box)
        return bool(self.coarse[cells].any())


def body_mask(data: torch.Tensor, nonzero: torch.Tensor) -> BodyMask:
    """The body mask of preprocessed ``data`` (channels, z, y, x) whose nnU-Net nonzero mask is ``nonzero`` (bool,
    z, y, x, False in padding)."""
    from scipy.ndimage import binary_dilation, binary_fill_holes

    with torch.inference_mode():
        body = torch.zeros(nonzero.shape, dtype=torch.bool)
        inside = data[:, nonzero] if bool(nonzero.any()) else data.new_zeros((data.shape[0], 0))
        for channel, values in enumerate(inside):
            if values.numel() == 0:
                continue
            sample = values[:: max(1, values.numel() // 1_000_000)]
            low, high = float(sample.min()), float(torch.quantile(sample, 0.99))
            body |= data[channel] > low + THRESHOLD * (high - low)
        body &= nonzero
        coarse = F.max_pool3d(body[None, None].float(), CELL, CELL, ceil_mode=True)[0, 0].numpy() > 0
    for index in range(coarse.shape[0]):
        coarse[index] = binary_fill_holes(coarse[index])
    coarse = binary_dilation(coarse, iterations=1)
    return BodyMask(coarse)

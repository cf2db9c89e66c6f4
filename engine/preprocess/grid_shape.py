"""The network grid an image will become, from its shape and spacing alone (no voxels resampled): for the memory
plan before preprocessing and for the viewer's time estimates."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.bundle import ModelBundle
from ..runtime.memory_plan import JobSize


@dataclass(frozen=True)
class ModelGrid:
    """What the estimate needs to know of a model: its grid and tile (no weights, so it is cheap to keep)."""

    transpose_forward: tuple[int, ...]
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    mirror_axes: tuple[int, ...]

    @classmethod
    def of(cls, bundle: ModelBundle) -> "ModelGrid":
        """The grid of a loaded model."""
        return cls(tuple(int(a) for a in bundle.plans_manager.transpose_forward),
                   tuple(float(s) for s in bundle.configuration_manager.spacing), tuple(bundle.patch_size),
                   tuple(a for a in bundle.mirror_axes if a < len(bundle.patch_size)))


def nonzero_extent(channels: Sequence[Any], stride: int = 4) -> tuple[int, int, int]:
    """The (z, y, x) size of the box nnU-Net crops the image to (its nonzero voxels in any channel), found on every
    ``stride``-th voxel and widened by the stride, so it costs milliseconds even for a large CT."""
    shape = tuple(int(s) for s in channels[0].shape)
    mask = np.zeros(tuple(-(-n // stride) for n in shape), dtype=bool)
    for channel in channels:
        mask |= np.asarray(channel[::stride, ::stride, ::stride]) != 0
    if not mask.any():
        return shape  # type: ignore[return-value]
    extent = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        low = max(int(hits[0]) * stride - stride, 0)
        high = min(int(hits[-1]) * stride + 2 * stride, shape[axis])
        extent.append(high - low)
    return tuple(extent)  # type: ignore[return-value]


def network_grid_shape(grid: ModelGrid, shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> tuple[int, ...]:
    """The padded network grid an image of this shape and spacing becomes (before nnU-Net's crop to nonzero, so an
    upper bound)."""
    shape = [int(shape_zyx[a]) for a in grid.transpose_forward]
    spacing = [float(spacing_zyx[a]) for a in grid.transpose_forward]
    target = list(grid.spacing)
    if len(target) < 3:
        target = [spacing[0], *target]
    resampled = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target)]
    patch = grid.patch_size if len(grid.patch_size) == 3 else (1, *grid.patch_size)
    return tuple(max(n, p) for n, p in zip(resampled, patch))


def forward_activation_bytes(bundle: ModelBundle, batch_size: int) -> int:
    """A rough figure for one forward pass's working memory: the full-resolution feature maps dominate a U-Net's
    activations (about a dozen of them alive at once, in float32)."""
    arch = bundle.configuration_manager.configuration.get("architecture", {}).get("arch_kwargs", {})
    features = arch.get("features_per_stage") or [32]
    voxels = int(np.prod(bundle.patch_size))
    return int(batch_size * voxels * int(features[0]) * 4 * 12)


def job_size(bundle: ModelBundle, volume: Any, batch_size: int) -> JobSize:
    """What a case will need, from its shape, spacing and nonzero box: before any voxel is resampled."""
    channels = [volume.array[c] for c in range(volume.num_channels)]
    box = nonzero_extent(channels)
    spacing = volume.nnunet_spacing
    grid = network_grid_shape(ModelGrid.of(bundle), box, spacing)
    heads = int(bundle.label_manager.num_segmentation_heads)
    return JobSize(input_voxels=int(np.prod(volume.shape)), channels=volume.num_channels,
                   network_voxels=int(np.prod(grid)), heads=heads,
                   label_bytes=1 if len(bundle.label_manager.foreground_labels) < 255 else 2,
                   activation_bytes=forward_activation_bytes(bundle, batch_size))

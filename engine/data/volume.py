"""The in-memory image: voxels in nnU-Net's (channel, z, y, x) order plus the SimpleITK geometry."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Physical placement of an image, in SimpleITK's (x, y[, z]) order.

    ``size`` is the number of voxels per axis; ``direction`` is the row-major direction cosine matrix.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def ndim(self) -> int:
        """2 for a single slice, 3 for a volume."""
        return len(self.size)

    def same_as(self, other: "Geometry", tolerance: float = 1e-5) -> bool:
        """True when both geometries place the same voxels at the same physical positions."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )


@dataclass
class Volume:
    """An image of one or more channels on one voxel grid.

    ``array`` has shape (channels, z, y, x) and dtype float32; a 2D image is stored with z = 1.
    """

    array: np.ndarray
    geometry: Geometry
    sources: tuple[Path, ...] = field(default_factory=tuple)
    dicom_files: tuple[Path, ...] = field(default_factory=tuple)
    """For a DICOM series input: the series' files in the order of the array's z slices; empty otherwise."""

    @property
    def num_channels(self) -> int:
        """Number of input channels (modalities)."""
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (z, y, x)."""
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def nnunet_spacing(self) -> list[float]:
        """Spacing in (z, y, x) order exactly as nnU-Net's SimpleITK reader reports it.

        A 2D image gets a huge out-of-plane spacing, as nnU-Net does, so it is never resampled along z.
        """
        spacing = list(self.geometry.spacing)
        if self.geometry.ndim == 2:
            return [float(abs(s)) for s in (max(spacing) * 999, *spacing[::-1])]
        return [float(abs(s)) for s in spacing[::-1]]

"""Mapping between the padded network grid and the input voxel grid.

nnU-Net's preprocessing transposes the input, crops it to the nonzero bounding box, resamples it to the network
spacing and (if smaller than a tile) pads it. :class:`GridMapper` undoes those steps for boxes and label maps, so
events and previews land on the input image.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..events import Box


class Boxed(Protocol):
    """Anything with a box in the padded network grid (a sliding-window tile)."""

    box: Box


@dataclass(frozen=True)
class GridMapper:
    """Geometry of one preprocessed case.

    All per-axis tuples are in the transposed (network) axis order: ``crop_start``/``crop_shape`` describe the crop
    box in the transposed input, ``network_shape`` the resampled unpadded grid and ``pad_before`` the padding added
    in front of each axis. ``transpose_forward`` maps network axes to input axes.
    """

    transpose_forward: tuple[int, int, int]
    crop_start: tuple[int, int, int]
    crop_shape: tuple[int, int, int]
    network_shape: tuple[int, int, int]
    pad_before: tuple[int, int, int]

    @property
    def transpose_backward(self) -> tuple[int, int, int]:
        """Axis order that turns a transposed array back into input order."""
        return tuple(int(i) for i in np.argsort(self.transpose_forward))  # type: ignore[return-value]

    def _scale(self, axis: int) -> float:
        return self.crop_shape[axis] / self.network_shape[axis]

    def input_box(self, box: Box) -> Box | None:
        """The input-grid (z, y, x) box covered by a padded-network-grid box; None if it lies in padding only."""
        transposed: list[slice] = []
        for axis in range(3):
            low = max(box[axis].start - self.pad_before[axis], 0)
            high = min(box[axis].stop - self.pad_before[axis], self.network_shape[axis])
            if high <= low:
                return None
            start = math.floor(low * self._scale(axis))
            stop = min(math.ceil(high * self._scale(axis)), self.crop_shape[axis])
            transposed.append(slice(start + self.crop_start[axis], stop + self.crop_start[axis]))
        result: list[slice] = [slice(0)] * 3
        for axis, input_axis in enumerate(self.transpose_forward):
            result[input_axis] = transposed[axis]
        return tuple(result)  # type: ignore[return-value]

    def labels_to_input(self, labels: np.ndarray, box: Box, target: Box) -> np.ndarray:
        """Nearest-neighbour copy of ``labels`` (the network-grid ``box``) onto the input-grid ``target`` box."""
        indices = []
        for axis in range(3):
            input_axis = self.transpose_forward[axis]
            cropped = np.arange(target[input_axis].start, target[input_axis].stop) - self.crop_start[axis]
            network = np.floor((cropped + 0.5) / self._scale(axis)).astype(np.int64)
            network = np.clip(network, 0, self.network_shape[axis] - 1) + self.pad_before[axis] - box[axis].start
            indices.append(np.clip(network, 0, labels.shape[axis] - 1))
        return labels[np.ix_(*indices)].transpose(self.transpose_backward)

    def network_index(self, input_axis: int, index: int) -> int | None:
        """Padded-network-grid index along the network axis that shows input slice ``index`` of ``input_axis``."""
        axis = self.transpose_forward.index(input_axis)
        cropped = index - self.crop_start[axis]
        if not 0 <= cropped < self.crop_shape[axis]:
            return None
        return min(int((cropped + 0.5) / self._scale(axis)), self.network_shape[axis] - 1) + self.pad_before[axis]

    def slice_priority(self, input_axis: int, index: int) -> Callable[[Boxed], float]:
        """A tile sort key that puts tiles showing input slice ``index`` first, nearest ones next."""
        target = self.network_index(input_axis, index)
        axis = self.transpose_forward.index(input_axis)

        def key(tile: Boxed) -> float:
            if target is None:
                return 0.0
            span = tile.box[axis]
            if span.start <= target < span.stop:
                return 0.0
            return 1.0 + min(abs(span.start - target), abs(span.stop - 1 - target))

        return key

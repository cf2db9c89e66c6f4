"""The image cropped to nnU-Net's nonzero box and normalised, read block by block instead of copied whole.

nnU-Net copies the whole image to float32, crops it and normalises the copy in place. Where every channel's
normalisation works voxel by voxel with fixed numbers (``CTNormalization``, ``NoNormalization``), a block of the
normalised image is the same numbers as that block of nnU-Net's copy: each block is copied from the input and
normalised by nnU-Net's own class, so the resampler reads blocks and no full-size copy is held. The nonzero box is
found slab by slab with the same result as ``get_bbox_from_mask`` on the whole mask.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime.parallel import slabs
from .spline_resize import Source

ELEMENTWISE_SCHEMES = frozenset({"CTNormalization", "NoNormalization"})
"""nnU-Net normalisations that map each voxel on its own with numbers fixed by the plans."""
_SLAB_BYTES = 16 * 2**20
"""Float32 bytes of input read at a time while looking for the nonzero box, the mask or a normalised copy."""


def _row_slabs(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Slabs of the first spatial axis of (channels, z, y, x) ``shape``, about :data:`_SLAB_BYTES` each."""
    return slabs(shape[1], -(-int(np.prod(shape)) * 4 // _SLAB_BYTES))


def nonzero_of(block: np.ndarray) -> np.ndarray:
    """nnU-Net's nonzero mask of (channels, ...) ``block``: some channel, as float32, is not 0."""
    mask = block[0].astype(np.float32, copy=False) != 0
    for channel in range(1, block.shape[0]):
        mask |= block[channel].astype(np.float32, copy=False) != 0
    return mask


def nonzero_box(image: np.ndarray) -> list[list[int]]:
    """``get_bbox_from_mask(nonzero_of(image))`` for (channels, z, y, x) ``image``, found slab by slab."""
    hits = [np.zeros(s, dtype=bool) for s in image.shape[1:]]
    for start, stop in _row_slabs(image.shape):
        mask = nonzero_of(image[:, start:stop])
        hits[0][start:stop] = mask.any(axis=(1, 2))
        hits[1] |= mask.any(axis=(0, 2))
        hits[2] |= mask.any(axis=(0, 1))
    box = []
    for hit in hits:
        where = np.flatnonzero(hit)
        box.append([int(where[0]), int(where[-1]) + 1] if where.size else [0, hit.size])
    return box


def cropped_nonzero(cropped: np.ndarray) -> np.ndarray:
    """The nonzero mask of (channels, z, y, x) ``cropped``, made slab by slab."""
    mask = np.empty(cropped.shape[1:], dtype=bool)
    for start, stop in _row_slabs(cropped.shape):
        mask[start:stop] = nonzero_of(cropped[:, start:stop])
    return mask


def elementwise_normalisers(manager: Any, intensities: dict[str, Any]) -> list[Any] | None:
    """nnU-Net's normaliser per channel, as ``DefaultPreprocessor._normalize`` makes them, or None if some channel's
    scheme is not voxel by voxel."""
    import os

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    if any(s not in ELEMENTWISE_SCHEMES for s in manager.normalization_schemes):
        return None
    normalisers = []
    for channel, scheme in enumerate(manager.normalization_schemes):
        found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "preprocessing", "normalization"), scheme,
                                            "nnunetv2.preprocessing.normalization")
        normalisers.append(found(use_mask_for_norm=manager.use_mask_for_norm[channel],
                                 intensityproperties=intensities[str(channel)]))
    return normalisers


class NormalisedCrop:
    """The cropped, normalised image (channels, z, y, x): ``cropped`` as it is (``normalisers`` None: it already is
    normalised) or normalised block by block when read."""

    def __init__(self, cropped: np.ndarray, normalisers: list[Any] | None) -> None:
        self.cropped = cropped
        self.normalisers = normalisers

    @property
    def shape(self) -> tuple[int, ...]:
        """(channels, z, y, x)."""
        return tuple(int(s) for s in self.cropped.shape)

    def block(self, channel: int, box: tuple[slice, slice, slice]) -> np.ndarray:
        """The normalised voxels of ``channel`` in ``box`` (float32; a new array unless already normalised)."""
        if self.normalisers is None:
            return self.cropped[channel][box]
        values = np.array(self.cropped[channel][box], dtype=np.float32)
        return self.normalisers[channel].run(values, None)  # nnU-Net's class, in place on our float32 copy

    def source(self, channel: int) -> Source:
        """``channel``'s normalised voxels as a :data:`~.spline_resize.Source`."""
        return lambda box: self.block(channel, box)

    def channel(self, channel: int, dtype: type = np.float32) -> np.ndarray:
        """All of ``channel``, normalised, as ``dtype`` (float64 filled block by block: no float32 copy first)."""
        if self.normalisers is None:
            return self.cropped[channel].astype(dtype, copy=False)
        return self._filled([channel], dtype)[0]

    def whole(self) -> np.ndarray:
        """All channels, normalised (float32)."""
        return self.cropped if self.normalisers is None else self._filled(list(range(self.shape[0])), np.float32)

    def _filled(self, channels: list[int], dtype: type) -> np.ndarray:
        out = np.empty((len(channels), *self.shape[1:]), dtype=dtype)
        for index, channel in enumerate(channels):
            for start, stop in _row_slabs(self.shape):
                out[index, start:stop] = self.block(channel, (slice(start, stop), slice(None), slice(None)))
        return out

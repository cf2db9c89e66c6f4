"""Which tiles hold no body voxel: the sliding window skips them when the preset says so."""
from __future__ import annotations

from collections.abc import Callable

from ..preprocess.body_mask import body_mask
from ..preprocess.pipeline import Preprocessed
from .plan import Tile


def empty_tile_test(prepared: Preprocessed) -> Callable[[Tile], bool] | None:
    """Whether a tile of ``prepared`` holds no body voxel (to skip it), or None without nnU-Net's nonzero mask."""
    if prepared.nonzero is None:
        return None
    mask = body_mask(prepared.data, prepared.nonzero)
    return lambda tile: not mask.touches(tile.box)

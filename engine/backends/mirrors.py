"""nnU-Net's test-time mirroring: which flips run for a tile."""
from __future__ import annotations

import itertools


def mirror_combinations(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """nnU-Net's mirror set: every non-empty combination of the spatial axes, as tensor dims (offset by 2)."""
    dims = [a + 2 for a in axes]
    return [c for n in range(1, len(dims) + 1) for c in itertools.combinations(dims, n)]

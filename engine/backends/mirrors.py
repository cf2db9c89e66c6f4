"""nnU-Net's test-time mirroring and fold ensembling: which flips run for a tile, and how the passes are averaged."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..events import check_cancelled

Array = TypeVar("Array")


def mirror_combinations(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """nnU-Net's mirror set: every non-empty combination of the spatial axes, as tensor dims (offset by 2)."""
    dims = [a + 2 for a in axes]
    return [c for n in range(1, len(dims) + 1) for c in itertools.combinations(dims, n)]


def average_folds_and_mirrors(folds: Sequence[Callable[[Array], Array]], inputs: Array,
                              mirrors: Sequence[tuple[int, ...]], flip: Callable[[Any, tuple[int, ...]], Any]) -> Array:
    """nnU-Net's ensemble of one batch: per fold the mean over the plain and every mirrored pass (each flipped back),
    then the mean over folds. ``folds`` return float32 logits for ``inputs``; ``flip`` flips an array along dims (a
    torch tensor or a numpy array: the backends share this rule, not their array type)."""
    total: Any = None
    for index, fold in enumerate(folds):
        if index:
            check_cancelled()  # a reference tile is 40 passes: Cancel lands between folds and mirrors
        prediction: Any = fold(inputs)
        for dims in mirrors:
            check_cancelled()
            prediction += flip(fold(flip(inputs, dims)), dims)
        if mirrors:
            prediction /= len(mirrors) + 1
        total = prediction if total is None else total + prediction
    assert total is not None
    if len(folds) > 1:
        total /= len(folds)
    return total

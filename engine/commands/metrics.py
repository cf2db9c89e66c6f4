"""Agreement between two label maps, as the benchmarks and the self-test report it."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dice_per_label(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice of each label value (default: every non-zero label present in either map); 1.0 where neither has it."""
    if labels is None:
        labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    scores = {}
    for label in labels:
        in_a, in_b = a == label, b == label
        total = int(in_a.sum()) + int(in_b.sum())
        scores[int(label)] = 1.0 if total == 0 else 2.0 * int((in_a & in_b).sum()) / total
    return scores

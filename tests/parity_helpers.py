"""How labels are compared with nnU-Net's: Dice per label, parity within a Dice bound, and equality to nnU-Net's
algorithm with float32 sums (the ``reference`` preset's promise). Not a test module: test_parity.py and
test_cascade.py import from here."""
from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    in_a, in_b = a == label, b == label
    total = int(in_a.sum() + in_b.sum())
    return 1.0 if total == 0 else 2.0 * int((in_a & in_b).sum()) / total


def assert_parity(ours: np.ndarray, theirs: np.ndarray, min_dice: float = 0.999) -> None:
    assert ours.shape == theirs.shape
    assert (ours == theirs).mean() >= 0.999
    labels = set(np.unique(theirs).tolist()) - {0}
    assert labels, "the reference prediction must contain foreground for the test to mean anything"
    for label in labels | (set(np.unique(ours).tolist()) - {0}):
        assert dice(ours, theirs, label) >= min_dice, f"label {label}"


EXACT_AGREEMENT = 0.999999
"""Voxels that must equal nnU-Net's algorithm with float32 sums (the ``reference`` preset's promise)."""


def assert_equal_to_float32_sums(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    agreement = float((ours == theirs).mean())
    assert agreement >= EXACT_AGREEMENT, f"{int((ours != theirs).sum())} of {ours.size} voxels differ"
    assert len(np.unique(theirs)) > 1, "the reference must contain foreground for the test to mean anything"

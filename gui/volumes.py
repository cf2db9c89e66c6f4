"""Label volumes: voxels per label times the volume of one voxel of the input grid.

A whole volume is counted off the GUI thread (:func:`count_labels`); an edit changes the counts by what it changed
(:func:`count_change`, :func:`apply_change`), so the volumes follow a brush stroke without counting every voxel.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from tilewise.engine import Geometry


def voxel_volume_ml(geometry: Geometry) -> float | None:
    """The volume of one voxel in mL (spacing in mm: mm³ / 1000); None for a 2D image."""
    if geometry.ndim != 3:
        return None
    return float(np.prod(np.asarray(geometry.spacing, dtype=float))) / 1000.0


def count_labels(labels: np.ndarray) -> dict[int, int]:
    """Voxels per label value (0 included), counted in slabs so no full-size temporary is made."""
    flat_slabs = labels.reshape(labels.shape[0], -1) if labels.ndim > 1 else labels.reshape(1, -1)
    rows = max(1, 4_000_000 // max(flat_slabs.shape[1], 1))
    totals = np.zeros(1, dtype=np.int64)
    for start in range(0, flat_slabs.shape[0], rows):
        counts = np.bincount(np.asarray(flat_slabs[start:start + rows]).ravel())
        if counts.size > totals.size:
            counts[: totals.size] += totals
            totals = counts
        else:
            totals[: counts.size] += counts
    return {int(v): int(n) for v, n in enumerate(totals) if n}


def count_change(changes: Iterable[tuple[np.ndarray, Any]], undone: bool = False) -> dict[int, int]:
    """Voxels gained (> 0) and lost (< 0) per label value by an edit.

    ``changes``: one (values before, value or values after) pair per part of the edit, holding just the voxels it
    changed; ``undone``: the edit was taken back (undo), so those voxels went from after to before.
    """
    totals: dict[int, int] = {}

    def add(values: np.ndarray, weight: int) -> None:
        counts = np.bincount(values.astype(np.intp, copy=False))
        for value in np.flatnonzero(counts):
            totals[int(value)] = totals.get(int(value), 0) + weight * int(counts[value])

    for before, after in changes:
        before, after = np.asarray(before).ravel(), np.asarray(after).ravel()
        if before.size == 0:
            continue
        if after.size == 1:  # one value painted over every changed voxel
            totals[int(after[0])] = totals.get(int(after[0]), 0) + before.size
        else:
            add(after, 1)
        add(before, -1)
    sign = -1 if undone else 1
    return {value: sign * difference for value, difference in totals.items() if difference}


def apply_change(counts: Mapping[int, int], change: Mapping[int, int]) -> dict[int, int]:
    """``counts`` (voxels per label value) after an edit that changed them by ``change``; labels left empty drop."""
    result = dict(counts)
    for value, difference in change.items():
        result[value] = result.get(value, 0) + difference
    return {value: voxels for value, voxels in result.items() if voxels}


def format_ml(millilitres: float) -> str:
    """'0 mL', '0.042 mL', '3.27 mL', '58.1 mL', '1,204 mL'."""
    if millilitres <= 0:
        return "0 mL"
    if millilitres < 0.1:
        return f"{millilitres:.3f} mL"
    if millilitres < 10:
        return f"{millilitres:.2f} mL"
    if millilitres < 1000:
        return f"{millilitres:.1f} mL"
    return f"{millilitres:,.0f} mL"

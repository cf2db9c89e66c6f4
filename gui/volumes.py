"""Label volumes: voxels per label (counted off the GUI thread) times the volume of one voxel of the input grid."""
from __future__ import annotations

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

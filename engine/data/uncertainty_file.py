"""Where ``--save_uncertainty`` writes a case's uncertainty map, and how: ``<case>_uncertainty<ext>`` beside its
labels, in the label file's image type (NIfTI beside a DICOM SEG or RTSTRUCT), uint8 percent with the input's
geometry, through the same staged, checked and renamed writer as the labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cases import Case
from .readers import image_suffix
from .volume import Geometry
from .writers import write_labels

UNCERTAINTY_SUFFIX = "_uncertainty"


def uncertainty_path(case: Case) -> Path:
    """``<case>_uncertainty<ext>`` in the case's output folder: the label file's type, or ``.nii.gz`` when the
    labels are a DICOM SEG or RTSTRUCT (an uncertainty map is an image, not a segmentation)."""
    suffix = image_suffix(case.output) or ".nii.gz"
    return case.output.with_name(f"{case.name}{UNCERTAINTY_SUFFIX}{suffix}")


def uncertainty_paths(cases: list[Case], with_uncertainty: bool) -> list[Path]:
    """The uncertainty maps a run over ``cases`` writes (none unless ``with_uncertainty``)."""
    return [uncertainty_path(case) for case in cases] if with_uncertainty else []


def write_uncertainty(uncertainty: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write the uncertainty map (uint8, z, y, x) with the input's ``geometry``, atomically and checked (errors as
    :func:`~.writers.write_labels`)."""
    write_labels(uncertainty.astype(np.uint8, copy=False), geometry, path)

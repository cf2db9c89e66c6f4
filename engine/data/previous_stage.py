"""A cascade stage's previous-stage segmentation from a file, as nnU-Net's ``-prev_stage_predictions FOLDER`` takes
it: ``FOLDER/<case><file_ending>`` (the ending the model's dataset.json names), a label map on the case's image grid,
as the previous stage's prediction writes it (``nnUNetv2_predict`` or ``tilewise predict`` with the 3d_lowres
model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .readers import image_suffix, read_volume
from .volume import Geometry, Volume

GEOMETRY_TOLERANCE = 1e-3
"""Millimetres (and direction cosines) by which a segmentation's grid may differ from its image's: a header's float32
rounding, far below any voxel."""


def previous_stage_file(folder: Path, case_name: str, file_ending: str) -> Path:
    """Where nnU-Net looks for case ``case_name``'s previous-stage segmentation in ``folder``."""
    return Path(folder) / f"{case_name}{file_ending}"


def check_previous_stage_file(path: Path, image: Path) -> None:
    """Raise :class:`InputError` (one line) unless ``path`` exists and its header puts its voxels where the header of
    ``image`` (the case's first channel file) puts them; an ``image`` that is not one image file (a DICOM folder, a
    zip) is compared once read (:func:`read_previous_stage`). Reads headers only."""
    _check_exists(path)
    if image.is_file() and image_suffix(image) is not None:
        _check_grid(path, _header_geometry(path), _header_geometry(image), image)


def read_previous_stage(path: Path, volume: Volume) -> np.ndarray:
    """The label map in ``path`` as (z, y, x) float32 labels in ``volume``'s voxel order (nnU-Net reads it as
    float32 too); :class:`InputError` unless it exists, holds one channel of whole non-negative numbers and lies
    on ``volume``'s grid."""
    _check_exists(path)
    segmentation = read_volume([path])
    _check_grid(path, segmentation.geometry, volume.geometry, volume.sources[0] if volume.sources else "the image")
    labels = segmentation.array
    if labels.shape[0] != 1 or labels.min() < 0 or not np.array_equal(labels, np.round(labels)):
        raise InputError(path, "is not a label map (one channel of whole numbers from 0 up); -prev_stage_predictions "
                               "takes the previous stage's output files")
    return labels[0]


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise InputError(path, "previous-stage segmentation not found (-prev_stage_predictions FOLDER holds the "
                               "previous stage's output of each case, named <case> plus the model's file ending)")


def _header_geometry(path: Path) -> Geometry:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, "cannot be read as an image") from None
    return Geometry(size=tuple(int(s) for s in reader.GetSize()), spacing=tuple(reader.GetSpacing()),
                    origin=tuple(reader.GetOrigin()), direction=tuple(reader.GetDirection()))


def _check_grid(path: Path, segmentation: Geometry, image: Geometry, image_name: Path | str) -> None:
    if segmentation.ndim == image.ndim and segmentation.same_as(image, GEOMETRY_TOLERANCE):
        return
    if segmentation.size != image.size:
        why = f"its size {segmentation.size} is not the image's {image.size}"
    else:
        why = "its spacing, origin or direction is not the image's"
    raise InputError(path, f"previous-stage segmentation does not lie on the grid of {image_name}: {why}")

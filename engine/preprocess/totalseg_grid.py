"""TotalSegmentator's own steps around its nnU-Net models, imported from its package (the ``totalseg`` extra) and
called as its ``nnUNet_predict_image`` calls them: crop to a mask with a margin, reorient to the closest canonical
(RAS) orientation, resample to the task's spacing (first order, stored as int32), and back: resample the labels to
the canonical image's shape (order 0), undo the reorientation, put the crop back into the input's grid.

The image a stage's models read is the file TotalSegmentator hands to nnU-Net: :func:`model_input` writes it (as
NIfTI, in a temporary folder) and reads it with Tilewise's reader, so the models see the voxels, spacing and
geometry nnU-Net's reader sees in that file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.readers import image_suffix, read_volume
from ..data.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def nifti_of(volume: Volume) -> Any:
    """The image as TotalSegmentator reads it with nibabel: the NIfTI file itself when the volume came from one,
    else the volume's voxels (x, y, z) with its geometry as a RAS affine (DICOM, NRRD, MHA inputs)."""
    import nibabel as nib

    source = volume.sources[0] if len(volume.sources) == 1 else None
    if source is not None and source.is_file() and image_suffix(source) in (".nii", ".nii.gz"):
        image = nib.load(str(source))
        if image.shape[:3] == volume.shape[::-1] and len(image.shape) == 3:
            return image
    geometry = volume.geometry
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(geometry.spacing)
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(geometry.origin, dtype=np.float64)
    return nib.Nifti1Image(np.ascontiguousarray(volume.array[0].transpose(2, 1, 0)), affine)


@dataclass
class TaskGrid:
    """A stage's image on its models' grid and what it takes to go back to the input's."""

    image: Any
    """The canonical, resampled (cropped) image TotalSegmentator gives nnU-Net (a nibabel image, x, y, z)."""
    canonical_shape: tuple[int, ...]
    """The shape before resampling (the labels are resampled back to it)."""
    canonical_affine: Any
    bbox: list[list[int]] | None
    """The crop in the input's voxels (x, y, z), or None."""


def to_task_grid(original: Any, resample: tuple[float, float, float] | None, crop_mask: Any | None = None,
                 crop_margin_mm: tuple[int, int, int] | None = None) -> TaskGrid | None:
    """``original`` (a nibabel image) cropped to ``crop_mask`` (nonzero voxels, a nibabel image on its grid) plus the
    margin, reoriented to RAS and resampled to ``resample`` as TotalSegmentator does it; None when the crop mask is
    empty (TotalSegmentator then returns an empty segmentation)."""
    import nibabel as nib
    from totalsegmentator.alignment import as_closest_canonical
    from totalsegmentator.cropping import crop_to_mask
    from totalsegmentator.resampling import change_spacing

    image = nib.Nifti1Image(original.get_fdata(), original.affine)  # TotalSegmentator's working copy (float64)
    bbox = None
    if crop_mask is not None:
        if not np.asarray(crop_mask.dataobj).any():
            return None
        image, bbox = crop_to_mask(image, crop_mask, addon=list(crop_margin_mm or (0, 0, 0)), dtype=np.int32)
    image = as_closest_canonical(image)
    canonical_shape, canonical_affine = tuple(image.shape), image.affine
    if resample is not None:
        image = change_spacing(image, list(resample), order=1, dtype=np.int32, nr_cpus=1)
    return TaskGrid(image, canonical_shape, canonical_affine, bbox)


def from_task_grid(labels: np.ndarray, grid: TaskGrid, original: Any, resample: tuple[float, float, float] | None,
                   ) -> np.ndarray:
    """Labels (x, y, z) on ``grid``'s image back on ``original``'s grid (x, y, z, uint8), as TotalSegmentator does it:
    nearest-neighbour resampling to the canonical shape, the reorientation undone, the crop put back."""
    import nibabel as nib
    from totalsegmentator.alignment import undo_canonical
    from totalsegmentator.cropping import undo_crop
    from totalsegmentator.resampling import change_spacing

    image = nib.Nifti1Image(labels, grid.image.affine)
    if resample is not None:
        image = change_spacing(image, list(resample), grid.canonical_shape, order=0, dtype=np.uint8, nr_cpus=1,
                               force_affine=grid.canonical_affine)
    image = undo_canonical(image, original)
    if grid.bbox is not None:
        image = undo_crop(image, original, grid.bbox)
    return np.asarray(image.dataobj).astype(np.uint8)


def model_input(image: Any, folder: Path) -> Volume:
    """``image`` written where nnU-Net would read it from (``folder``/case_0000.nii) and read back as a
    :class:`Volume` (SimpleITK's voxel order and geometry); the file stays for readers that read it again."""
    import nibabel as nib

    path = folder / "case_0000.nii"  # uncompressed: the same voxels and header as TotalSegmentator's .nii.gz
    nib.save(image, str(path))
    return read_volume([path])

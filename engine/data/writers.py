"""Writing label maps (and nnU-Net's probability files) with the input's geometry, atomically and checked.

Each file is written in a staging folder, checked byte for byte (:mod:`.write_checks`), then moved onto its name
(:func:`~.safe_output.atomic_output`); a short write or a full disk is one error, never a truncated file."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .native_stderr import holding_native_stderr
from .safe_output import IncompleteFile, atomic_output, write_bytes_checked
from .volume import Geometry
from .write_checks import check_image_file, save_npz_checked


def labels_to_image(labels: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Wrap a (z, y, x) label array in a SimpleITK image with ``geometry`` (uint8, or uint16 beyond 254 labels)."""
    dtype = np.uint8 if labels.max(initial=0) < 255 else np.uint16
    array = labels.astype(dtype, copy=False)
    if geometry.ndim == 2:
        array = array.reshape(array.shape[-2:])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _itk_reason(error: RuntimeError) -> str:
    """The reason in an ITK writer's exception ('Reason: No space left on device'), without ITK's source lines."""
    text = str(error)
    if "Reason:" not in text:
        return "the image writer failed"
    return text.rsplit("Reason:", 1)[-1].strip().splitlines()[0]


def write_image_checked(image: sitk.Image, staged: Path) -> None:
    """Write ``image`` at ``staged`` with SimpleITK (compressed where the format allows) and check the file.

    ITK's own lines about a failed write are held back (:mod:`.native_stderr`); its exception or a short file
    becomes :class:`IncompleteFile`, which :func:`atomic_output` turns into one plain error."""
    with holding_native_stderr():
        try:
            sitk.WriteImage(image, str(staged), True)
        except RuntimeError as error:
            raise IncompleteFile(_itk_reason(error)) from None
        check_image_file(staged, image)


def write_labels(labels: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a label map with the input's geometry, atomically and checked, compressed where the format allows.

    Raises a :class:`~tilewise.engine.errors.TilewiseError` naming ``path`` when it cannot be written whole (no
    space, read-only, no permission: exit 3; a path that cannot be a file: exit 2); nothing is left under ``path``.
    """
    if tuple(labels.shape[::-1][: geometry.ndim]) != geometry.size:
        raise ValueError(f"label shape {labels.shape} does not match geometry size {geometry.size}")
    image = labels_to_image(labels, geometry)
    with atomic_output(path) as staging:
        write_image_checked(image, staging)


def write_probabilities(probabilities: np.ndarray, properties: dict, path_truncated: Path) -> None:
    """Save class probabilities as nnU-Net does: ``<case>.npz`` (key 'probabilities') and ``<case>.pkl``, each
    atomically and checked (errors as :func:`write_labels`)."""
    npz = path_truncated.with_name(path_truncated.name + ".npz")
    pkl = path_truncated.with_name(path_truncated.name + ".pkl")
    with atomic_output(npz) as staging:
        save_npz_checked(staging, probabilities=probabilities)
    with atomic_output(pkl) as staging:
        write_bytes_checked(staging, pickle.dumps(properties))

"""Writing label maps (and nnU-Net's probability files) with the input's geometry, atomically."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .safe_output import atomic_output
from .volume import Geometry


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


def write_labels(labels: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a label map with the input's geometry, atomically, compressed where the format allows."""
    if tuple(labels.shape[::-1][: geometry.ndim]) != geometry.size:
        raise ValueError(f"label shape {labels.shape} does not match geometry size {geometry.size}")
    image = labels_to_image(labels, geometry)
    with atomic_output(path) as staging:
        sitk.WriteImage(image, str(staging), True)


def write_probabilities(probabilities: np.ndarray, properties: dict, path_truncated: Path) -> None:
    """Save class probabilities as nnU-Net does: ``<case>.npz`` (key 'probabilities') and ``<case>.pkl``."""
    npz = path_truncated.with_name(path_truncated.name + ".npz")
    pkl = path_truncated.with_name(path_truncated.name + ".pkl")
    with atomic_output(npz) as staging:
        with open(staging, "wb") as handle:
            np.savez_compressed(handle, probabilities=probabilities)
    with atomic_output(pkl) as staging:
        with open(staging, "wb") as handle:
            pickle.dump(properties, handle)

"""Images of a kind for the tests that ask "is this image for this model?": a CT in Hounsfield units and an MR.
Not a test module: test modules import from here, never from each other."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def ct_like(path: Path, spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)) -> Path:
    """A CT in Hounsfield units: air -1000 around a body of soft tissue and bone (-100..1500)."""
    rng = np.random.default_rng(0)
    array = np.full((48, 64, 64), -1000, np.int16)
    array[8:40, 8:56, 8:56] = rng.integers(-100, 1500, (32, 48, 48))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def mr_like(path: Path, spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)) -> Path:
    """An MR: background exactly 0, tissue 100..700, no negative value."""
    rng = np.random.default_rng(1)
    array = np.zeros((40, 48, 56), np.float32)
    array[6:34, 8:40, 8:48] = rng.uniform(100, 700, (28, 32, 40))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path

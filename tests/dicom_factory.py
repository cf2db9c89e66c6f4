"""DICOM series for the tests, written with SimpleITK: a CT Image Storage series with the attributes DICOM outputs
reference (``write_ct_series``), a plain 2D-file series (``write_dicom_series``), and the demo sample resampled onto a
grid of one's choice (``resampled_sample``). Not a test module: test modules import from here, never from each other.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "demo" / "sample_t1.nii.gz"


def write_ct_series(image: sitk.Image, folder: Path) -> None:
    """``image`` as a CT Image Storage series, one file per slice; files named against the slice order (the last
    slice is 'a000.dcm') so that nothing can rely on file names."""
    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": generate_uid(), "0008|0060": "CT",
                "0010|0010": "Test^Phantom", "0010|0020": "TW001", "0008|0020": "20261201", "0008|0030": "120000",
                "0020|000d": study, "0020|000e": series, "0020|0052": frame, "0020|0010": "1", "0020|0011": "1",
                "0020|0013": str(k + 1), "0018|0050": str(image.GetSpacing()[2]),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"a{image.GetDepth() - 1 - k:03d}.dcm"))
        writer.Execute(plane)


def resampled_sample(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> sitk.Image:
    """The demo sample resampled onto ``size`` voxels of ``spacing`` mm around its centre (its own direction)."""
    sample = sitk.ReadImage(str(SAMPLE))
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(sample.GetDirection())
    centre = np.array(sample.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in sample.GetSize()]))
    offset = np.array(grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
    grid.SetOrigin(tuple(centre - offset))
    return sitk.Resample(sample, grid, sitk.Transform(), sitk.sitkLinear, 0.0)


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, prefix: str) -> None:
    """Write ``image`` (int16) as one 2D DICOM file per slice, as SimpleITK's DicomSeriesFromArray example does."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for index in range(image.GetDepth()):
        slice_image = image[:, :, index]
        slice_image.SetMetaData("0008|0060", "CT")
        slice_image.SetMetaData("0008|0008", "DERIVED\\SECONDARY")
        slice_image.SetMetaData("0020|000d", series_uid + ".0")
        slice_image.SetMetaData("0020|000e", series_uid)
        slice_image.SetMetaData("0020|0037", orientation)
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        slice_image.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        slice_image.SetMetaData("0020|0013", str(index + 1))
        writer.SetFileName(str(folder / f"{prefix}{index:03d}.dcm"))
        writer.Execute(slice_image)

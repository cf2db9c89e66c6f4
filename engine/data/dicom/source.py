"""The DICOM series a label map was computed on, for outputs that reference it (DICOM SEG, RTSTRUCT): its headers,
a check that the label map lies on its grid, and which source frame each label slice is.

pydicom, highdicom and rt-utils come with the optional ``dicom`` extra; they are imported only when a DICOM output
is written, and :func:`missing_dicom_extra` tells the command line before any work that one is not installed.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...errors import InputError, TilewiseError
from ..volume import Geometry
from .conformance import with_type2_attributes

INSTALL_HINT = 'pip install "tilewise[dicom]"'
_MODULES: dict[str, tuple[str, ...]] = {"dicom-seg": ("pydicom", "highdicom"),
                                        "dicom-rtstruct": ("pydicom", "rt_utils")}


def missing_dicom_extra(output_type: str) -> str | None:
    """The first module ``output_type`` ('dicom-seg', 'dicom-rtstruct') needs that is not installed, else None."""
    for name in _MODULES.get(output_type, ()):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def require_dicom_extra(output_type: str) -> None:
    """Raise a one-line :class:`TilewiseError` naming the install command when ``output_type`` cannot be written."""
    missing = missing_dicom_extra(output_type)
    if missing is not None:
        raise TilewiseError(None, f"--output-type {output_type} needs the DICOM extra ({missing} is not installed); "
                                  f"install it with: {INSTALL_HINT}")


class DicomGrid(Protocol):
    """What a DICOM output needs of its source image: the grid and the DICOM files (a :class:`Volume` has both)."""

    @property
    def geometry(self) -> Geometry: ...

    @property
    def dicom_files(self) -> tuple[Path, ...]: ...


@dataclass(frozen=True)
class DicomSource:
    """A source image's grid and DICOM files without its voxels (what a batch keeps until a case is written)."""

    geometry: Geometry
    dicom_files: tuple[Path, ...]


@dataclass(frozen=True)
class SourceSeries:
    """The source image(s) of a label map: their headers (no pixel data), in file order, and for every label slice
    ``k`` the source frame it lies on, ``(dataset index, frame number from 1)``."""

    datasets: list[Any]
    frames: list[tuple[int, int]]

    @property
    def first_file(self) -> str:
        """The first source file (for error messages)."""
        return str(getattr(self.datasets[0], "filename", "") or "the DICOM series")


def _frame_planes(dataset: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]]:
    """(position, orientation, pixel spacing, (rows, columns)) of every frame of one single- or multi-frame image."""
    shape = (int(dataset.Rows), int(dataset.Columns))
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        return [(np.array(dataset.ImagePositionPatient, float), np.array(dataset.ImageOrientationPatient, float),
                 np.array(dataset.PixelSpacing, float), shape)]
    shared = dataset.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in dataset else None
    planes = []
    for group in dataset.PerFrameFunctionalGroupsSequence:
        def attribute(sequence: str, keyword: str) -> np.ndarray:
            for source in (group, shared):
                if source is not None and sequence in source:
                    return np.array(getattr(source[sequence][0], keyword), float)
            raise InputError(dataset.filename, f"multi-frame image lacks {sequence} > {keyword}")

        planes.append((attribute("PlanePositionSequence", "ImagePositionPatient"),
                       attribute("PlaneOrientationSequence", "ImageOrientationPatient"),
                       attribute("PixelMeasuresSequence", "PixelSpacing"), shape))
    return planes


REFERENCED_ATTRIBUTES: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                                          "FrameOfReferenceUID")
"""What a SEG or RTSTRUCT copies from every source image to reference it."""


def read_source_series(files: Sequence[Path]) -> list[Any]:
    """The headers of the source files, without pixel data (a SEG or RTSTRUCT needs only the headers), with the
    Type 2 patient and study attributes a derived object copies present (empty where a file lacks them); raises
    :class:`InputError` naming the first file that lacks one of :data:`REFERENCED_ATTRIBUTES`."""
    import pydicom

    if not files:
        raise InputError(None, "DICOM SEG and RTSTRUCT outputs need a DICOM series input (this image has no DICOM "
                               "files)")
    datasets = [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]
    for path, dataset in zip(files, datasets):
        missing = [keyword for keyword in REFERENCED_ATTRIBUTES if not str(dataset.get(keyword, "") or "")]
        if missing:
            raise InputError(path, f"lacks {', '.join(missing)}, which a DICOM SEG or RTSTRUCT must reference")
    return [with_type2_attributes(dataset) for dataset in datasets]


def match_source(labels: np.ndarray, source: DicomGrid, datasets: list[Any] | None = None) -> SourceSeries:
    """Check that ``labels`` (z, y, x) lies on ``source``'s grid and on its DICOM frames; find each slice's frame.

    Raises :class:`InputError` naming the first source file when the shapes differ or a label slice lies on no
    source frame (position, orientation or pixel spacing beyond a hundredth of a voxel), e.g. a label map from
    another series or a resampled one.
    """
    datasets = read_source_series(source.dicom_files) if datasets is None else datasets
    name = str(source.dicom_files[0]) if source.dicom_files else "the DICOM series"
    geometry = source.geometry
    shape = tuple(geometry.size[::-1]) if geometry.ndim == 3 else (1, *geometry.size[::-1])
    if labels.shape != shape:
        raise InputError(name, f"label map of shape {labels.shape} (z, y, x) does not match the image's {shape}")
    direction = np.array(geometry.direction, float).reshape(geometry.ndim, geometry.ndim)
    spacing = np.array(geometry.spacing, float)
    origin = np.array(geometry.origin, float)
    if geometry.ndim == 2:  # a single image: its own plane, no slice axis
        direction, spacing, origin = np.pad(direction, (0, 1)), np.append(spacing, 1.0), np.append(origin, 0.0)
        direction[2, 2] = 1.0
    orientation = np.concatenate([direction[:, 0], direction[:, 1]])
    pixel_spacing = np.array([spacing[1], spacing[0]])
    planes = [(index, number, plane) for index, dataset in enumerate(datasets)
              for number, plane in enumerate(_frame_planes(dataset), 1)]
    keys = [(index, number) for index, number, _ in planes]
    positions = np.array([plane[0] for _, _, plane in planes])
    fits = np.array([np.allclose(plane[1], orientation, atol=1e-3) and np.allclose(plane[2], pixel_spacing, rtol=1e-3)
                     and plane[3] == labels.shape[1:] for _, _, plane in planes])
    if not fits.any():
        _, _, (_, frame_orientation, frame_spacing, shape) = planes[0]
        raise InputError(name, f"the label map's grid (orientation {np.round(orientation, 4).tolist()}, pixel "
                               f"spacing {pixel_spacing.tolist()}, {labels.shape[1:]} pixels) is not the DICOM "
                               f"series' ({frame_orientation.tolist()}, {frame_spacing.tolist()}, {shape})")
    tolerance = 0.01 * float(min(spacing))
    frames: list[tuple[int, int]] = []
    free = fits.copy()
    for k in range(labels.shape[0]):
        expected = origin + k * spacing[2] * direction[:, 2]
        distance = np.where(free, np.linalg.norm(positions - expected, axis=1), np.inf)
        best = int(np.argmin(distance))
        if distance[best] > tolerance:
            raise InputError(name, f"label slice {k} (at {np.round(expected, 3).tolist()} mm) lies on no frame of "
                                   "the DICOM series: the label map is not on this series' grid")
        free[best] = False
        frames.append(keys[best])
    return SourceSeries(datasets, frames)

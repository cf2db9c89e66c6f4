"""The geometry of DICOM slice stacks: their order along the slice normal, whether they form one regular volume,
and a multi-frame enhanced object's frames (functional groups) as the image SimpleITK reads from the equivalent
single-frame series."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ...errors import InputError

ORIENTATION_TOLERANCE = 1e-3
"""How far direction cosines may differ between slices of one volume."""
POSITION_TOLERANCE = 1e-3
"""Slices closer than this (mm) along the normal share a position."""
GAP_TOLERANCE = 0.1
"""How far a slice gap may differ from the mean gap, relative to it (positions are rounded decimal strings)."""
SHEAR_TOLERANCE = 0.01
"""How far the last slice may sit off the normal through the first, relative to the stack's length (0.6 degrees)."""


def floats(value: Any, count: int) -> np.ndarray | None:
    """``value`` (a DICOM multi-valued number) as ``count`` floats, or None when it is missing or malformed."""
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) else None


def stack_order(orientations: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The order of slices (``orientations`` n x 6, ``positions`` n x 3, DICOM patient coordinates) along their
    normal, and why they cannot form one regular volume (None when they can)."""
    order = np.arange(len(positions))
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        kinds = len({tuple(np.round(o, 2)) for o in orientations})
        return order, f"its slices have {kinds} different orientations"
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if len(order) < 2:
        return order, None
    gaps = np.diff(along[order])
    distinct = 1 + int(np.sum(gaps > POSITION_TOLERANCE))
    if distinct < len(order):
        return order, (f"its {len(order)} slices lie at only {distinct} positions (several echoes, phases or "
                       "b-values in one series?)")
    length = float(along[order[-1]] - along[order[0]])
    mean = length / (len(order) - 1)
    if np.abs(gaps - mean).max() > GAP_TOLERANCE * mean:
        return order, (f"its slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm (missing "
                       "slices?)")
    offset = positions[order[-1]] - positions[order[0]]
    sideways = float(np.linalg.norm(offset - (offset @ normal) * normal))
    if sideways > SHEAR_TOLERANCE * length:
        return order, (f"its slices are sheared by {np.degrees(np.arctan2(sideways, length)):.1f} degrees (gantry "
                       "tilt?); resample it to a regular grid first")
    return order, None


def _frame_value(dataset: Any, frame: int, sequence: str, keyword: str) -> Any:
    """``keyword`` of ``sequence`` for one frame: from its per-frame functional group, else the shared one."""
    for groups, index in ((dataset.get("PerFrameFunctionalGroupsSequence"), frame),
                          (dataset.get("SharedFunctionalGroupsSequence"), 0)):
        if groups and index < len(groups) and sequence in groups[index] and len(groups[index][sequence].value):
            item = groups[index][sequence].value[0]
            if keyword in item:
                return item[keyword].value
    return None


@dataclass(frozen=True)
class Frames:
    """The geometry and rescale of each frame of a multi-frame object, in the object's frame order."""

    orientations: np.ndarray
    positions: np.ndarray
    pixel_spacing: tuple[float, float]
    slopes: np.ndarray
    intercepts: np.ndarray


def frame_geometry(dataset: Any, path: Path) -> Frames:
    """Each frame's orientation, position and rescale, and the pixel spacing, from the functional groups."""
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    orientations, positions, spacings, slopes, intercepts = [], [], set(), [], []
    for frame in range(count):
        orientation = floats(_frame_value(dataset, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        position = floats(_frame_value(dataset, frame, "PlanePositionSequence", "ImagePositionPatient"), 3)
        spacing = floats(_frame_value(dataset, frame, "PixelMeasuresSequence", "PixelSpacing"), 2)
        if orientation is None or position is None or spacing is None:
            raise InputError(path, f"frame {frame + 1} has no plane position, orientation or pixel spacing")
        orientations.append(orientation)
        positions.append(position)
        spacings.add(tuple(np.round(spacing, 6)))
        slope = _frame_value(dataset, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_value(dataset, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        slopes.append(float(slope if slope is not None else dataset.get("RescaleSlope", 1) or 1))
        intercepts.append(float(intercept if intercept is not None else dataset.get("RescaleIntercept", 0) or 0))
    if len(spacings) > 1:
        raise InputError(path, "its frames have different pixel spacings; cannot be one volume")
    row_spacing, column_spacing = spacings.pop()
    return Frames(np.stack(orientations), np.stack(positions), (float(row_spacing), float(column_spacing)),
                   np.asarray(slopes), np.asarray(intercepts))


def multiframe_image(dataset: Any, path: Path) -> sitk.Image:
    """A multi-frame enhanced object as SimpleITK reads the equivalent single-frame series: frames sorted along the
    slice normal, origin at the first, direction columns (row, column, normal), rescaled to float32 (``dataset``:
    the object read by pydicom, pixel data included)."""
    frames = frame_geometry(dataset, path)
    order, problem = stack_order(frames.orientations, frames.positions)
    if problem is not None:
        raise InputError(path, f"cannot be read as one volume: {problem}")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for a transfer syntax it has no decoder for
        raise InputError(path, f"cannot decode its pixel data ({dataset.file_meta.TransferSyntaxUID.name}: "
                               f"{str(error).splitlines()[0][:160]}); install pylibjpeg for JPEG") from None
    stored = stored.reshape(len(frames.positions), int(dataset.Rows), int(dataset.Columns))
    values = (stored[order].astype(np.float64) * frames.slopes[order, None, None]
              + frames.intercepts[order, None, None]).astype(np.float32)
    row, column = frames.orientations[0, :3], frames.orientations[0, 3:]
    along = frames.positions[order] @ np.cross(row, column)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((frames.pixel_spacing[1], frames.pixel_spacing[0], float(along[-1] - along[0]) / (len(order) - 1)))
    image.SetOrigin(tuple(float(v) for v in frames.positions[order[0]]))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, column, np.cross(row, column)]).ravel()))
    return image

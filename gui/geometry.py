"""World transforms: an engine :class:`Geometry` (SimpleITK x, y, z order) <-> napari layer transforms (z, y, x).

A voxel at numpy index ``d = (z, y, x)`` lies at the physical point ``origin + D @ diag(spacing) @ d[::-1]``
(SimpleITK's rule). napari maps data to world as ``affine @ (translate + scale * d)``. World axes are (z, y, x) in
physical millimetres, so ``scale = spacing[::-1]`` and the origin goes into ``translate``.

The direction is applied where napari can slice it: axis flips (the usual LPS/RAS cases) are applied exactly, so
world axes (z, y, x) are the patient's (superior, posterior, left). napari cannot slice a volume whose axes are
swapped or tilted against the world axes, so such volumes are shown in their own voxel frame (voxel 0 at the
origin), and a tilted one in its nearest axes. Either way the data stay on their voxel grid: the engine's tile
boxes, the live preview and saving never resample. :func:`patient_axes` says which patient axis each world axis of
a layer runs along; :mod:`.orientation` uses it to show every view in radiological convention. Image and labels
layers built from one geometry always share one transform and overlay voxel for voxel; the exact geometry travels
in the layer metadata for saving.
"""
from __future__ import annotations

from itertools import permutations
from typing import Any

import numpy as np
from tilewise.engine import Geometry


def _as_3d(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, origin, direction 3x3) in SimpleITK order; a 2D geometry gets a unit third axis."""
    n = geometry.ndim
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction = np.eye(3)
    spacing[:n] = geometry.spacing
    origin[:n] = geometry.origin
    direction[:n, :n] = np.asarray(geometry.direction, dtype=float).reshape(n, n)
    return spacing, origin, direction


def layer_transform(geometry: Geometry) -> dict[str, Any]:
    """``scale``, ``translate`` and ``affine`` keyword arguments for a napari layer of a (z, y, x) array."""
    spacing, origin, direction = _as_3d(geometry)
    linear = display_direction(direction[::-1, ::-1])  # R D R, reduced to what napari can slice
    affine = np.eye(4)
    affine[:3, :3] = linear  # a 4x4 matrix: napari decomposes a bare 3x3 one and loses some axis flips
    return {
        "scale": tuple(float(s) for s in spacing[::-1]),
        "translate": tuple(float(t) for t in linear.T @ origin[::-1]),
        "affine": affine,
    }


def display_direction(direction_zyx: np.ndarray) -> np.ndarray:
    """The part of a (z, y, x) direction matrix napari can slice: its axis flips, when no axes are swapped."""
    nearest = np.argmax(np.abs(direction_zyx), axis=1)
    if not np.array_equal(nearest, np.arange(3)):
        return np.eye(3)  # swapped axes: show the voxel frame
    return np.diag(np.where(np.diag(direction_zyx) < 0, -1.0, 1.0))


def geometry_from_layer(layer: Any) -> Geometry:
    """The geometry a layer was read with (metadata), else one rebuilt from its scale, translate and affine."""
    stored = layer.metadata.get("tilewise_geometry") if hasattr(layer, "metadata") else None
    if isinstance(stored, Geometry):
        return stored
    return geometry_from_transform(layer.data.shape, layer.scale, layer.translate, layer.affine.affine_matrix)


def geometry_from_transform(shape: Any, scale: Any, translate: Any, affine: Any) -> Geometry:
    """Geometry of a (z, y, x) array shown with napari's ``scale``, ``translate`` and ``affine`` (matrix)."""
    size = tuple(int(s) for s in tuple(shape)[-3:])
    scale = np.asarray(scale, dtype=float)[-3:]
    translate = np.asarray(translate, dtype=float)[-3:]
    matrix = np.asarray(affine, dtype=float)
    matrix = np.eye(4) if matrix.shape[0] < 4 else matrix[-4:, -4:]
    linear, shift = matrix[:3, :3], matrix[:3, 3]
    origin_zyx = linear @ translate + shift
    direction = linear[::-1, ::-1]
    return Geometry(
        size=size[::-1],
        spacing=tuple(float(s) for s in scale[::-1]),
        origin=tuple(float(o) for o in origin_zyx[::-1]),
        direction=tuple(float(d) for d in direction.ravel()),
    )


def through_plane_axis(layer: Any, world_axis: int) -> int:
    """The data axis of ``layer`` that moves most along ``world_axis`` (the axis a slider scrolls through)."""
    linear = np.asarray(layer.affine.affine_matrix, dtype=float)[-4:-1, -4:-1] @ np.diag(layer.scale[-3:])
    return int(np.argmax(np.abs(linear[world_axis])))


def slice_on_screen(viewer: Any, layer: Any) -> tuple[int, int] | None:
    """(data axis, index) of the slice of ``layer`` that ``viewer`` shows, or None when no slice is on screen (a 3D
    view, or no slider)."""
    if viewer.dims.ndisplay != 2:
        return None
    not_displayed = list(viewer.dims.not_displayed)
    if not not_displayed:
        return None
    world_axis = not_displayed[0]
    axis = through_plane_axis(layer, world_axis - (viewer.dims.ndim - 3))
    position = layer.world_to_data(viewer.dims.point)[-3:]
    index = int(np.clip(round(float(position[axis])), 0, layer.data.shape[axis] - 1))
    return axis, index


# Patient axes in (z, y, x) order of SimpleITK's LPS frame: a positive step goes superior, posterior, left.
SUPERIOR_INFERIOR, ANTERIOR_POSTERIOR, LEFT_RIGHT = 0, 1, 2


def patient_from_world(layer: Any) -> np.ndarray:
    """3x3 matrix whose column ``j`` is the patient displacement (LPS, z y x order, mm) of a 1 mm step along the
    layer's world axis ``j`` (its last three world axes)."""
    spacing, _, direction = _as_3d(geometry_from_layer(layer))
    patient_from_data = direction[::-1, ::-1] @ np.diag(spacing[::-1])
    world_from_data = np.asarray(layer.affine.affine_matrix, dtype=float)[-4:-1, -4:-1] @ np.diag(layer.scale[-3:])
    return patient_from_data @ np.linalg.inv(world_from_data)


def patient_axes(layer: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """For each of the layer's three world axes, ``(patient axis, sign)``: the patient axis it runs along
    (:data:`SUPERIOR_INFERIOR`, :data:`ANTERIOR_POSTERIOR`, :data:`LEFT_RIGHT`) and +1 when a step along it goes
    superior, posterior or left, -1 when inferior, anterior or right.

    A tilted (oblique) volume gets its nearest patient axes: the one-to-one match that follows the direction
    cosines most closely.
    """
    matrix = patient_from_world(layer)
    best = max(permutations(range(3)), key=lambda rows: sum(abs(matrix[rows[j], j]) for j in range(3)))
    return tuple((best[j], 1 if matrix[best[j], j] > 0 else -1) for j in range(3))  # type: ignore[return-value]

"""Bringing an image into view: centred, zoomed to fit, on its middle slice (a DICOM series on its first image).

napari fits the camera to every layer at once and steps its sliders over all of them: two scans one metre apart in
the scanner's space are shown as two dots at the ends of a long, empty slider. :class:`Framing` fits the view to one
image instead: every newly opened image (on its middle slice, or a DICOM series' first image), and the selected
image whenever the view is reset (napari's Home button, a change of plane, the View buttons). A reset keeps the slice
on screen when it lies inside that image. Only napari's public API is used (``reset_view(layers=...)``,
``dims.set_point``, ``layer.data_to_world``).
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QObject, QTimer

from .contributions import META_FIRST_SLICE
from .layers import META_OVERLAY

_INSTALLED: weakref.WeakValueDictionary[int, Framing] = weakref.WeakValueDictionary()


def _is_volume(layer: Any) -> bool:
    return isinstance(layer, (Image, Labels)) and layer.ndim >= 2 and not getattr(layer, "rgb", False)


def start_index(layer: Any) -> tuple[int, ...]:
    """The voxel of ``layer`` an opened image is shown at: the middle of every axis, but a DICOM series' first image
    along its slice axis."""
    index = [size // 2 for size in layer.data.shape]
    first = getattr(layer, "metadata", {}).get(META_FIRST_SLICE)
    if first is not None and layer.ndim >= 3:
        index[-3] = int(np.clip(int(first), 0, layer.data.shape[-3] - 1))
    return tuple(index)


def _grid_shown(viewer: Any) -> bool:
    """True when napari shows the layers side by side (its grid mode fits them all, as it should)."""
    canvas = getattr(viewer, "canvas", None)  # napari 0.9 moved the grid to viewer.canvas
    grid = getattr(canvas, "grid", None) if canvas is not None else getattr(viewer, "grid", None)
    return bool(getattr(grid, "enabled", False))


def _world_axes(viewer: Any, layer: Any) -> list[int]:
    """The viewer's world axes that ``layer`` spans (napari lines layers up on their last axes)."""
    return list(range(viewer.dims.ndim - layer.ndim, viewer.dims.ndim))


def inside(viewer: Any, layer: Any, axis: int) -> bool:
    """True when the viewer's current point along world ``axis`` lies within ``layer`` (half a voxel around it)."""
    offset = viewer.dims.ndim - layer.ndim
    low, high = (float(v) for v in np.asarray(layer.extent.world)[:, axis - offset])
    step = float(np.asarray(layer.extent.step)[axis - offset]) if hasattr(layer.extent, "step") else 0.0
    return low - step / 2 - 1e-6 <= float(viewer.dims.point[axis]) <= high + step / 2 + 1e-6


class Framing(QObject):
    """Keeps one viewer's newly opened images, and the selected image at every reset, in view.

    Make it with :func:`install_framing` and keep a reference: napari holds only weak references to it.
    """

    def __init__(self, viewer: Any, follow: Any = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.follow = follow
        """An object whose ``layer`` is the image on screen (the :class:`~.orientation.Orientation`), or None."""
        self._pending: Any = None
        self._framing = False
        self._connections = ((viewer.layers.events.inserted, self._on_inserted),
                             (viewer.layers.selection.events.active, self._on_active),
                             (viewer.events.reset_view, self._on_reset))
        for emitter, callback in self._connections:
            emitter.connect(callback, position="last")  # after napari and the orientation have laid out the view

    def selected(self) -> Any:
        """The image (or labels) layer the view follows: the active one, else the one on screen."""
        active = self.viewer.layers.selection.active
        if _is_volume(active):
            return active
        layer = getattr(self.follow, "layer", None)
        return layer if layer is not None and layer in self.viewer.layers else None

    def frame(self, layer: Any, keep_slice: bool = True) -> None:
        """Centre ``layer`` and zoom it to fit; move the sliders to its start slice (:func:`start_index`), or with
        ``keep_slice`` only along the axes where the slice on screen lies outside it."""
        if layer is None or layer not in self.viewer.layers or _grid_shown(self.viewer):
            return
        axes = _world_axes(self.viewer, layer)
        start = np.asarray(layer.data_to_world(start_index(layer)), dtype=float)[-len(axes):]
        moved = [(axis, value) for axis, value in zip(axes, start)
                 if not (keep_slice and inside(self.viewer, layer, axis))]
        self._framing = True
        try:
            if moved:
                self.viewer.dims.set_point([a for a, _ in moved], [float(v) for _, v in moved])
            self.viewer.reset_view(layers=[layer])
        finally:
            self._framing = False

    def frame_selected(self, *_: object) -> None:
        """Reset the view to the selected image (what Home and the View buttons do)."""
        self.frame(self.selected(), keep_slice=True)

    # ---- events -------------------------------------------------------------------------------------
    def _on_inserted(self, event: Any) -> None:
        if isinstance(event.value, Image) and _is_volume(event.value) and not event.value.metadata.get(META_OVERLAY):
            self._pending = event.value
            QTimer.singleShot(0, self._frame_pending)  # in case napari does not make it the active layer

    def _on_active(self, *_: object) -> None:
        if self._pending is not None and self.viewer.layers.selection.active is self._pending:
            self._frame_pending()

    def _frame_pending(self) -> None:
        layer, self._pending = self._pending, None
        if layer is not None:
            self.frame(layer, keep_slice=False)

    def _on_reset(self, *_: object) -> None:
        """napari reset the view (Home, a new plane, the first layer): fit the selected image instead of all."""
        if not self._framing:
            self.frame_selected()

    def close(self) -> None:
        """Stop following the viewer."""
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections = ()
        if _INSTALLED.get(id(self.viewer)) is self:
            del _INSTALLED[id(self.viewer)]


def install_framing(viewer: Any, follow: Any = None) -> Framing:
    """Keep ``viewer``'s opened images in view from now on (see :class:`Framing`); returns the handle (the same one
    when called again for the same viewer). Keep it: napari holds only weak references."""
    existing = _INSTALLED.get(id(viewer))
    if existing is not None and existing.viewer is viewer:
        return existing
    handle = Framing(viewer, follow)
    _INSTALLED[id(viewer)] = handle
    return handle

"""One 3D point shared by several canvases: a click in one, its slider, or code moves it in all of them.

napari keeps a point per viewer (``viewer.dims.point``, world coordinates, one value per axis): each canvas shows the
slice through it along its own axis. :class:`PointLink` keeps those points equal, so scrolling the axial slices moves
the coronal and sagittal crosshairs, and code that sets the main viewer's point (``viewer.dims.set_point``) moves
every view there. :func:`click_sets_point` is a napari mouse callback: a left click without dragging moves the point
to where it was made, on the two axes on screen (the slice on screen stays).
"""
from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

CLICK_SLOP_PX = 4  # a press that moves less than this before its release is a click, not a drag (a pan)


def click_sets_point(viewer: Any, event: Any) -> Generator[None, None, None]:
    """napari mouse-drag callback: a left click without modifier keys and without dragging, in a 2D view whose active
    layer is in pan/zoom mode (not painting), sets ``viewer``'s point to where it was made."""
    if event.button != 1 or event.modifiers or viewer.dims.ndisplay != 2:
        return
    if str(getattr(viewer.layers.selection.active, "mode", "pan_zoom")) != "pan_zoom":
        return
    pressed = np.asarray(event.pos, dtype=float)
    yield
    while event.type == "mouse_move":
        if np.hypot(*(np.asarray(event.pos, dtype=float) - pressed)) > CLICK_SLOP_PX:
            return
        yield
    axes = [int(axis) for axis in event.dims_displayed]
    viewer.dims.set_point(axes, [float(event.position[axis]) for axis in axes])


class PointLink:
    """Keeps the point of every linked viewer's dims equal to that of the one that last moved."""

    def __init__(self) -> None:
        self._dims: list[Any] = []
        self._moving = False

    def add(self, dims: Any, follow: Any = None) -> None:
        """Link ``dims``; it starts at ``follow``'s point (another dims) when given."""
        self._dims.append(dims)
        dims.events.point.connect(self._on_point)
        if follow is not None:
            self.align(follow)

    def remove(self, dims: Any) -> None:
        """Unlink ``dims`` (its point stays where it is)."""
        if dims in self._dims:
            self._dims.remove(dims)
            dims.events.point.disconnect(self._on_point)

    def align(self, source: Any) -> None:
        """Move every other linked viewer's point to ``source``'s (a dims with as many axes; others are left)."""
        if self._moving:
            return  # a viewer that cannot reach the point (fewer layers, for a moment) does not pull the others back
        self._moving = True
        try:
            point = tuple(source.point)
            for dims in self._dims:
                if dims is not source and dims.ndim == source.ndim and tuple(dims.point) != point:
                    dims.point = point
        finally:
            self._moving = False

    def _on_point(self, event: Any) -> None:
        self.align(event.source)

    def close(self) -> None:
        """Unlink every viewer."""
        for dims in list(self._dims):
            self.remove(dims)

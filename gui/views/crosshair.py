"""The crosshair of one canvas: two thin lines through the viewer's point, along the two axes on screen.

It is a vispy line drawn in the canvas's scene (world coordinates), above every layer, so it is no napari layer: it
is not in the layer list, never saved and never taken for an image. It follows the viewer's dims: the point (a
click, a slider, code), the axes on screen and 2D/3D (a 3D view shows none).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from vispy.scene.visuals import Line

COLOUR = (0.35, 0.85, 1.0, 0.9)  # light blue: apart from the grey scale, the yellow letters and most label colours
REACH_MM = 10_000.0  # each line runs this far either side of the point: past the canvas edge at any zoom
ABOVE_LAYERS = 1_000_000  # vispy draws nodes in this order: layers take 0, 1, 2, ...


class Crosshair:
    """Two lines through ``viewer``'s point in the canvas scene ``scene`` (see :func:`.._compat.scene_node`)."""

    def __init__(self, viewer: Any, scene: Any) -> None:
        self.viewer = viewer
        self.node = Line(pos=np.zeros((4, 2), dtype=np.float32), color=COLOUR, width=1, connect="segments",
                         method="gl", parent=scene)
        self.node.order = ABOVE_LAYERS
        self.node.set_gl_state("translucent", depth_test=False)
        dims = viewer.dims
        self._connections = ((dims.events.point, self.update), (dims.events.order, self.update),
                             (dims.events.ndisplay, self.update), (dims.events.ndim, self.update),
                             (viewer.layers.events.inserted, self.update), (viewer.layers.events.removed, self.update))
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self.update()

    @property
    def centre(self) -> tuple[int, int, float, float] | None:
        """``(vertical axis, horizontal axis, vertical value, horizontal value)``: the world axes on screen and where
        the lines cross (mm); None while no crosshair is shown."""
        if not self.node.visible:
            return None
        dims = self.viewer.dims
        vertical, horizontal = dims.order[-2:]
        return vertical, horizontal, float(dims.point[vertical]), float(dims.point[horizontal])

    def update(self, *_: object) -> None:
        """Draw the lines through the viewer's point (hide them in 3D or without layers)."""
        dims = self.viewer.dims
        shown = dims.ndisplay == 2 and dims.ndim >= 2 and len(self.viewer.layers) > 0
        if shown:
            vertical, horizontal = dims.order[-2:]
            y, x = float(dims.point[vertical]), float(dims.point[horizontal])
            self.node.set_data(pos=np.array([[x - REACH_MM, y], [x + REACH_MM, y], [x, y - REACH_MM],
                                             [x, y + REACH_MM]], dtype=np.float32))
        self.node.visible = shown

    def close(self) -> None:
        """Stop following the viewer and take the lines off the canvas."""
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections = ()
        self.node.parent = None

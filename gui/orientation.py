"""Anatomical orientation: axial, coronal and sagittal views in radiological convention, with L/R/A/P/S/I letters.

The convention (the common radiological one):

- axial: anterior up, the patient's right on the screen's left (seen from the feet);
- coronal: superior up, the patient's right on the screen's left (seen from the front);
- sagittal: superior up, anterior on the screen's left (seen from the patient's left).

Layers keep their voxel frame (:mod:`.geometry`), so the engine's tile boxes, the live preview and saving are
untouched. The viewer follows one image: the active image or labels layer that Tilewise read or made (other layers'
axes need not be anatomical; while one of them is active, the last image stays followed). For it,
:func:`.geometry.patient_axes` says which patient axis each world axis runs along and in which sense; the viewer's
dims order then puts the right world axes vertical and horizontal, and the camera's 2D orientation points them the
right way, whatever the file's direction matrix. Oblique volumes are shown in their nearest patient axes, not
resampled: the letters name those nearest axes. Labels layers built from the same geometry share the image's
transform and follow.

Whatever view the person picks (the buttons of :class:`OrientationButtons`, napari's "roll dimensions" button, the
dims order), the two axes on screen are laid out by the convention. napari's roll button steps through axial,
coronal and sagittal (its own roll would alternate between coronal and sagittal only, both having superior up);
its "transpose" button would mirror the patient out of the convention, so the view stays as it is. The letters sit
at the four canvas edges and follow every change of dims order, camera orientation or followed image. A 3D view
shows no letters.
"""
from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import numpy as np
from napari.components.overlays import TextOverlay
from napari.layers import Image, Labels
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from . import _compat
from .geometry import ANTERIOR_POSTERIOR, LEFT_RIGHT, SUPERIOR_INFERIOR, patient_axes

VIEWS = ("axial", "coronal", "sagittal")
EDGES = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}
OVERLAY_PREFIX = "tilewise_orientation_"

# Per view: the patient axis through the screen, then the (patient axis, sense) pointing down and pointing right.
CONVENTION = {
    "axial": (SUPERIOR_INFERIOR, (ANTERIOR_POSTERIOR, +1), (LEFT_RIGHT, +1)),  # posterior down, left on the right
    "coronal": (ANTERIOR_POSTERIOR, (SUPERIOR_INFERIOR, -1), (LEFT_RIGHT, +1)),  # inferior down, left on the right
    "sagittal": (LEFT_RIGHT, (SUPERIOR_INFERIOR, -1), (ANTERIOR_POSTERIOR, +1)),  # inferior down, posterior right
}
LETTERS = {(SUPERIOR_INFERIOR, 1): "S", (SUPERIOR_INFERIOR, -1): "I", (ANTERIOR_POSTERIOR, 1): "P",
           (ANTERIOR_POSTERIOR, -1): "A", (LEFT_RIGHT, 1): "L", (LEFT_RIGHT, -1): "R"}
TIPS = {"axial": "Axial: anterior up, the patient's right on the left",
        "coronal": "Coronal: superior up, the patient's right on the left",
        "sagittal": "Sagittal: superior up, anterior on the left"}
PLANE_OF_AXIS = {SUPERIOR_INFERIOR: "axial", ANTERIOR_POSTERIOR: "coronal", LEFT_RIGHT: "sagittal"}

Axes = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

_INSTALLED: weakref.WeakValueDictionary[int, Orientation] = weakref.WeakValueDictionary()


def view_through(axes: Axes, world_axis: int) -> str:
    """The view whose slices are stacked along ``world_axis`` (0-2) of an image with patient ``axes``."""
    return PLANE_OF_AXIS[axes[world_axis][0]]


def radiological_layout(axes: Axes, view: str) -> tuple[tuple[int, int, int], tuple[str, str]]:
    """``((through, vertical, horizontal) world axes, (vertical, horizontal) camera orientation)`` that show
    ``view`` of an image with patient ``axes`` in radiological convention."""
    through, (down_axis, down_sense), (right_axis, right_sense) = CONVENTION[view]
    world = {patient: (j, sense) for j, (patient, sense) in enumerate(axes)}
    vertical, vertical_sense = world[down_axis]
    horizontal, horizontal_sense = world[right_axis]
    orientation = ("down" if vertical_sense == down_sense else "up",
                   "right" if horizontal_sense == right_sense else "left")
    return (world[through][0], vertical, horizontal), orientation


def edge_letters(axes: Axes, vertical: int, horizontal: int, orientation: tuple[str, str]) -> dict[str, str]:
    """The letter of the patient direction at each canvas edge (top, bottom, left, right), for world axes
    ``vertical`` and ``horizontal`` (0-2) on screen with the camera's 2D ``orientation``."""
    down_axis, down_sense = axes[vertical]
    right_axis, right_sense = axes[horizontal]
    down_sense *= 1 if str(orientation[0]) == "down" else -1
    right_sense *= 1 if str(orientation[1]) == "right" else -1
    return {"top": LETTERS[down_axis, -down_sense], "bottom": LETTERS[down_axis, down_sense],
            "left": LETTERS[right_axis, -right_sense], "right": LETTERS[right_axis, right_sense]}


def _camera(viewer: Any) -> Any:
    scene = getattr(viewer, "scene", None)  # napari 0.9 moved the camera to viewer.scene
    return scene.camera if scene is not None else viewer.camera


def _followable(layer: Any) -> bool:
    """An image or labels layer that Tilewise placed in patient space (others' axes may not be anatomical)."""
    return (isinstance(layer, (Image, Labels)) and layer.ndim >= 3 and not getattr(layer, "rgb", False)
            and layer.metadata.get("tilewise_geometry") is not None)


class Orientation(QObject):
    """Keeps one viewer's views in radiological convention and its orientation letters up to date.

    Make it with :func:`install_orientation` and keep a reference: napari holds only weak references to it.
    """

    view_changed = Signal(str)  # "axial", "coronal", "sagittal"; "" when no image is followed or the view is 3D

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer: Any = None
        self._view: str | None = None
        self._order: tuple[int, ...] = tuple(viewer.dims.order)
        self._applying = False
        self._overlays = _compat.canvas_overlays(viewer)
        if self._overlays is not None:
            for edge, position in EDGES.items():
                self._overlays[OVERLAY_PREFIX + edge] = TextOverlay(
                    text="", position=position, font_size=14, color="#ffd24d", box=False, visible=False)
        # the letters go when this handle goes, even if nobody called close()
        self._remove_letters = weakref.finalize(self, _remove_letters, self._overlays)
        self._connections = ((viewer.dims.events.order, self._on_order),
                             (viewer.dims.events.ndisplay, self._on_ndisplay),
                             (_camera(viewer).events.orientation, self._show_letters),
                             (viewer.layers.events.inserted, self._follow_active),
                             (viewer.layers.events.removed, self._follow_active),
                             (viewer.layers.selection.events.active, self._follow_active))
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self._follow_active()

    # ---- what is shown ------------------------------------------------------------------------------
    @property
    def view(self) -> str | None:
        """The view on screen: "axial", "coronal" or "sagittal" (None without a followed image or in 3D)."""
        return self._view if self.layer is not None and self.viewer.dims.ndisplay == 2 else None

    @property
    def letters(self) -> dict[str, str]:
        """The letters at the canvas edges, {"top": .., "bottom": .., "left": .., "right": ..} ({} when none)."""
        if self._overlays is None:
            return {}
        shown = {edge: self._overlays[OVERLAY_PREFIX + edge] for edge in EDGES}
        return {edge: overlay.text for edge, overlay in shown.items() if overlay.visible}

    def available_views(self) -> tuple[str, ...]:
        """The views the followed image has: all three for a volume, the one plane of a single slice."""
        if self.layer is None:
            return ()
        axes = patient_axes(self.layer)
        flat = [j for j, size in enumerate(self.layer.data.shape[-3:]) if size == 1]
        return (view_through(axes, flat[0]),) if flat else VIEWS

    def show(self, view: str) -> bool:
        """Show ``view`` of the followed image in radiological convention (in 2D); False when it has no such
        view."""
        if view not in self.available_views():
            return False
        if self.viewer.dims.ndisplay != 2:
            self._applying = True  # the 2D switch re-lays the axes below, once
            try:
                self.viewer.dims.ndisplay = 2
            finally:
                self._applying = False
        self._apply(view)
        return True

    # ---- events -------------------------------------------------------------------------------------
    def _follow_active(self, *_: object) -> None:
        """Follow the active image (or labels) layer; keep the current one while another kind of layer is active."""
        layers = self.viewer.layers
        active = layers.selection.active
        if _followable(active):
            chosen = active
        elif self.layer is not None and self.layer in layers:
            chosen = self.layer
        else:
            chosen = next((layer for layer in reversed(layers) if _followable(layer)), None)
        if chosen is self.layer:
            return
        self.layer = chosen
        if chosen is None:
            self._view = None
            self._show_letters()
            self.view_changed.emit("")
            return
        if self._view is None or self._view not in self.available_views():
            self._view = self._view_of_order(tuple(self.viewer.dims.order))
        self._label_sliders()
        self._apply(self._view)

    def _on_order(self, *_: object) -> None:
        if self._applying:
            return
        order = tuple(self.viewer.dims.order)
        previous, self._order = self._order, order
        if self.layer is None or self.viewer.dims.ndisplay != 2:
            self._show_letters()
            return
        view = self._view_of_order(order)
        if self._view is not None and order == self._rolled(previous):
            views = self.available_views()
            view = views[(views.index(self._view) + 1) % len(views)] if self._view in views else views[0]
        self._apply(view)

    def _on_ndisplay(self, *_: object) -> None:
        if self._applying:
            return
        if self.viewer.dims.ndisplay == 2 and self.layer is not None:
            self._apply(self._view_of_order(tuple(self.viewer.dims.order)))
        else:
            self._show_letters()
            self.view_changed.emit("")

    # ---- laying out the axes --------------------------------------------------------------------------
    def _offset(self) -> int:
        """World index of the followed image's first axis (napari lines layers up on their last axes)."""
        return self.viewer.dims.ndim - 3

    def _view_of_order(self, order: tuple[int, ...]) -> str:
        """The view whose through-plane axis is the followed image's axis nearest the displayed ones in
        ``order`` (a single slice has only its one view)."""
        views = self.available_views()
        if len(views) == 1:
            return views[0]
        offset = self._offset()
        shown = set(order[-2:])
        through = next((axis for axis in reversed(order) if axis >= offset and axis not in shown), offset)
        return view_through(patient_axes(self.layer), through - offset)

    def _rolled(self, order: tuple[int, ...]) -> tuple[int, ...]:
        """``order`` after napari's roll (the rule of ``Dims.roll``: rollable axes with more than one step)."""
        dims = self.viewer.dims
        if len(order) != dims.ndim:
            return ()
        rolled = np.array(order)
        valid = np.logical_and(dims.rollable, np.array(dims.nsteps) > 1)[rolled]
        rolled[valid] = np.roll(rolled[valid], shift=1)
        return tuple(int(axis) for axis in rolled)

    def _apply(self, view: str) -> None:
        """Lay out the dims order and camera orientation for ``view``, then update letters and buttons."""
        dims = self.viewer.dims
        if self.layer is None or dims.ndim < 3 or dims.ndisplay != 2:
            self._show_letters()
            return
        offset = self._offset()
        (through, vertical, horizontal), orientation = radiological_layout(patient_axes(self.layer), view)
        image_axes = (through + offset, vertical + offset, horizontal + offset)
        order = tuple(axis for axis in dims.order if axis not in image_axes) + image_axes
        self._applying = True
        try:
            if tuple(dims.order) != order:
                dims.order = order
            camera = _camera(self.viewer)
            if tuple(str(o) for o in camera.orientation[1:]) != orientation:
                camera.orientation = (camera.orientation[0], *orientation)
        finally:
            self._applying = False
        self._order = tuple(dims.order)
        self._view = view
        self._show_letters()
        self.view_changed.emit(view)

    def _show_letters(self, *_: object) -> None:
        if self._overlays is None:
            return
        dims = self.viewer.dims
        offset = self._offset()
        shown = [axis - offset for axis in dims.order[-2:]]
        letters: dict[str, str] = {}
        if self.layer is not None and dims.ndisplay == 2 and min(shown, default=-1) >= 0:
            orientation = tuple(str(o) for o in _camera(self.viewer).orientation[1:])
            letters = edge_letters(patient_axes(self.layer), shown[0], shown[1], orientation)
        for edge in EDGES:
            overlay = self._overlays[OVERLAY_PREFIX + edge]
            overlay.text = letters.get(edge, "")
            overlay.visible = edge in letters

    def _label_sliders(self) -> None:
        """Name the followed image's sliders after the planes they step through."""
        dims = self.viewer.dims
        if dims.ndim < 3:
            return
        axes = patient_axes(self.layer)
        labels = list(dims.axis_labels)
        labels[self._offset():] = [view_through(axes, j) for j in range(3)]
        dims.axis_labels = labels

    def close(self) -> None:
        """Stop following the viewer and remove the letters (the views stay as they are)."""
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections = ()
        self._remove_letters()
        self._overlays = None
        self.layer = None
        if _INSTALLED.get(id(self.viewer)) is self:
            del _INSTALLED[id(self.viewer)]


def _remove_letters(overlays: Any) -> None:
    """Take the orientation letters off the canvas."""
    if overlays is not None:
        for edge in EDGES:
            overlays.pop(OVERLAY_PREFIX + edge, None)


class OrientationButtons(QWidget):
    """Three small buttons, Axial, Coronal and Sagittal, that show that view; the one on screen is checked."""

    clicked = Signal(str)  # the view a button was clicked for, after it is shown

    def __init__(self, orientation: Orientation, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.orientation = orientation
        self.buttons: dict[str, QPushButton] = {}
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        column.addLayout(row)
        for view in VIEWS:
            button = QPushButton(self)
            button.setText(view.capitalize())
            button.setToolTip(TIPS[view])
            button.setCheckable(True)
            button.clicked.connect(partial(self._on_clicked, view))
            self.buttons[view] = button
            row.addWidget(button)
        row.addStretch(1)
        orientation.view_changed.connect(self._show)
        self._show()

    def add(self, widget: QWidget) -> None:
        """Put ``widget`` (the "Three planes" button) under the three view buttons (a narrow dock has no room
        beside them)."""
        self.layout().addWidget(widget, 0, Qt.AlignLeft)

    def _on_clicked(self, view: str, *_: object) -> None:
        self.orientation.show(view)
        self._show()
        self.clicked.emit(view)

    def _show(self, *_: object) -> None:
        current = self.orientation.view
        available = self.orientation.available_views()
        for view, button in self.buttons.items():
            button.setEnabled(view in available)
            button.setChecked(view == current)


def install_orientation(viewer: Any) -> Orientation:
    """Show ``viewer``'s views in radiological convention with orientation letters, from now on; returns the
    handle (the same one when called again for the same viewer). Keep it: napari holds only weak references."""
    existing = _INSTALLED.get(id(viewer))
    if existing is not None and existing.viewer is viewer:
        return existing
    handle = Orientation(viewer)
    _INSTALLED[id(viewer)] = handle
    return handle

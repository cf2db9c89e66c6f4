"""Axial, coronal and sagittal side by side, with a linked crosshair, as radiology viewers show a volume.

napari's own canvas shows one plane (axial unless the View buttons chose another); two extra canvases
(:mod:`.canvases`) stacked on its right show the other two planes of the same layers. Each view is in radiological
convention with its orientation letters (:mod:`..orientation`), and brings the selected image into view as napari's
canvas does (:mod:`..framing`: an opened image, Home, Ctrl+R). The three views share one 3D point
(:mod:`.linking`): each shows the slice through it and a crosshair on it (:mod:`.crosshair`); a click in one view,
its slider, or code that sets the main viewer's point moves the other two. Zoom and pan stay each view's own.

The standalone ``tilewise`` shows the three planes from the start; inside napari, as a plugin, napari's single
canvas stays until the person clicks "Three planes" (:meth:`ThreePlanes.button`).
"""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import QPushButton, QVBoxLayout, QWidget

from .. import _compat
from ..framing import install_framing
from ..orientation import VIEWS, install_orientation
from .canvases import MirrorViewer
from .crosshair import Crosshair
from .linking import PointLink, click_sets_point

MAIN_STRETCH, SIDE_STRETCH = 3, 2  # napari's canvas 3/5 of the width, the two stacked planes 2/5, where the canvases'
# minimum sizes leave room (1920 x 1080: 725 and 483 px; 1366 x 768: 347 and 307 px)
TIP = ("Show axial, coronal and sagittal side by side with a crosshair: a click in one view moves the other two "
       "to that point")


class Plane:
    """One extra canvas: a mirror of the main viewer showing ``view`` in radiological convention, with letters, a
    crosshair and click-to-point."""

    def __init__(self, main: Any, view: str) -> None:
        self.mirror = MirrorViewer(main, title=view)
        self.model = self.mirror.model
        self.view = view
        self.orientation = install_orientation(self.model)
        self.framing = install_framing(self.model, self.orientation)
        self.orientation.view_changed.connect(self._keep_view)
        self.model.canvas.events.size.connect(self._on_resized)
        self.crosshair = Crosshair(self.model, _compat.scene_node(self.mirror.qt_viewer))
        self.model.mouse_drag_callbacks.append(click_sets_point)
        self.show(view)

    def show(self, view: str) -> None:
        """Show ``view`` ("axial", "coronal" or "sagittal") of the image on screen, in view."""
        self.view = view
        if self.orientation.show(view):
            self.framing.frame_selected()

    def _keep_view(self, view: str) -> None:
        """An image arrived or the axes changed (napari's roll key): back to this canvas's plane."""
        if view and view != self.view and self.view in self.orientation.available_views():
            self.show(self.view)

    def _on_resized(self, *_: object) -> None:
        """The canvas got its size in the window (or the window changed): the image fits it again."""
        self.framing.frame_selected()

    def close(self) -> None:
        """Take the canvas apart."""
        self.model.canvas.events.size.disconnect(self._on_resized)
        self.crosshair.close()
        self.orientation.view_changed.disconnect(self._keep_view)
        self.orientation.close()
        self.framing.close()
        self.mirror.close()


class ThreePlanes(QObject):
    """The three-plane layout of one napari viewer's window; off until :meth:`set_shown` (or its button)."""

    shown_changed = Signal(bool)

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = _compat.napari_object(viewer)  # a plugin gets napari's proxy: the canvases need the viewer
        self.orientation = install_orientation(self.viewer)  # the handles napari's canvas already has
        self.framing = install_framing(self.viewer, self.orientation)
        self.planes: list[Plane] = []
        self._side: QWidget | None = None
        self._crosshair: Crosshair | None = None
        self._link: PointLink | None = None
        self._canvas: Any = None

    @property
    def shown(self) -> bool:
        """True while the three planes are on screen."""
        return self._side is not None

    def views(self) -> dict[str, Any]:
        """The viewer (napari's, or an extra canvas's model) that shows each plane, while shown."""
        if not self.shown:
            return {}
        return {plane.view: plane.model for plane in self.planes} | {self.main_view(): self.viewer}

    def main_view(self) -> str:
        """The plane napari's own canvas shows (axial when it shows none: no image yet, or 3D)."""
        return self.orientation.view or next((v for v in VIEWS if v not in {p.view for p in self.planes}), "axial")

    def crosshairs(self) -> dict[str, Crosshair]:
        """Each view's crosshair, while shown."""
        if self._crosshair is None:
            return {}
        return {plane.view: plane.crosshair for plane in self.planes} | {self.main_view(): self._crosshair}

    def button(self, parent: QWidget | None = None) -> QPushButton:
        """A checkable "Three planes" button that shows and hides them, checked while they are shown."""
        button = QPushButton("Three planes", parent)
        button.setCheckable(True)
        button.setChecked(self.shown)
        button.setToolTip(TIP)
        button.toggled.connect(self.set_shown)
        self.shown_changed.connect(button.setChecked)
        return button

    def set_shown(self, shown: bool) -> None:
        """Show the three planes (a no-op where napari's canvas has no window to share) or go back to one canvas."""
        if shown and not self.shown:
            self._show()
        elif not shown and self.shown:
            self._hide()
        else:
            return
        self.shown_changed.emit(self.shown)

    # ---- showing and hiding --------------------------------------------------------------------------------
    def _show(self) -> None:
        self._canvas = _compat.main_canvas(self.viewer)
        area = self._canvas.parentWidget() if self._canvas is not None else None
        if area is None or area.layout() is None:
            return
        main_view = self.orientation.view or "axial"
        self._side = QWidget()
        column = QVBoxLayout(self._side)
        column.setContentsMargins(0, 0, 0, 0)
        self._link = PointLink()
        self._link.add(self.viewer.dims)
        for view in (v for v in VIEWS if v != main_view):
            plane = Plane(self.viewer, view)
            self.planes.append(plane)
            column.addWidget(plane.mirror.qt_viewer)
            self._link.add(plane.model.dims, follow=self.viewer.dims)
        self._crosshair = Crosshair(self.viewer, _compat.scene_node(self._canvas))
        self.viewer.mouse_drag_callbacks.append(click_sets_point)
        self.orientation.view_changed.connect(self._on_main_view)
        self.viewer.layers.events.inserted.connect(self._align, position="last")
        self.viewer.events.reset_view.connect(self._frame_planes)
        self._canvas.installEventFilter(self)  # viewer.close() closes napari's canvas: the planes go first
        area.layout().addWidget(self._side, SIDE_STRETCH)
        area.layout().setStretchFactor(self._canvas, MAIN_STRETCH)
        self.viewer.canvas.events.size.connect(self._refit_main)  # as the extra canvases do (Plane._on_resized)

    def _hide(self) -> None:
        side, self._side = self._side, None
        self.viewer.layers.events.inserted.disconnect(self._align)
        self.viewer.events.reset_view.disconnect(self._frame_planes)
        self.orientation.view_changed.disconnect(self._on_main_view)
        if click_sets_point in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(click_sets_point)
        if self._crosshair is not None:
            self._crosshair.close()
        if self._link is not None:
            self._link.close()
        for plane in self.planes:
            plane.close()
        self.planes, self._crosshair, self._link = [], None, None
        try:
            self._canvas.removeEventFilter(self)
            area = self._canvas.parentWidget()
            if area is not None and area.layout() is not None:
                area.layout().removeWidget(side)
                area.layout().setStretchFactor(self._canvas, 0)
            side.setParent(None)
        except RuntimeError:  # the window is gone already, and the canvases with it
            pass
        self._canvas = None
        self.viewer.canvas.events.size.connect(self._refit_main)  # once more, when it has its whole width again

    def _refit_main(self, *_: object) -> None:
        """napari's canvas changed size with the layout (the planes shown or hidden, the window or the dock
        resized): the image fits it again."""
        if not self.shown:
            self.viewer.canvas.events.size.disconnect(self._refit_main)
        self.framing.frame_selected()

    # ---- events ---------------------------------------------------------------------------------------------
    def _on_main_view(self, view: str) -> None:
        """napari's canvas shows another plane: the extra canvases show the other two."""
        if not view:
            return
        for plane, other in zip(self.planes, (v for v in VIEWS if v != view)):
            if plane.view != other:
                plane.show(other)

    def _align(self, *_: object) -> None:
        """A layer was added (and mirrored): every view to the main viewer's point (a view that lacked the layer
        could not reach it)."""
        if self._link is not None:
            self._link.align(self.viewer.dims)

    def _frame_planes(self, *_: object) -> None:
        """napari's canvas was reset (an opened image, Home, a View button): the other views fit the same image."""
        for plane in self.planes:
            plane.framing.frame_selected()

    def eventFilter(self, watched: Any, event: QEvent) -> bool:  # Qt override
        if watched is self._canvas and event.type() == QEvent.Close:
            self.set_shown(False)
        return False

    def close(self) -> None:
        """Go back to napari's single canvas for good (the dock widget was closed, or the window)."""
        self.set_shown(False)

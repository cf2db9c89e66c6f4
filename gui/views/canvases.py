"""Extra canvases beside napari's own, whose layers mirror the main viewer's: the one module that makes them.

napari 0.9 draws one canvas per window (its grid mode puts layers side by side, not planes). An extra canvas here is
what napari's ``examples/multiple_viewer_widget.py`` makes: a :class:`napari.components.ViewerModel` drawn by a
:class:`napari.qt.QtViewer` (its canvas and its slider). Each layer of the main viewer has a mirror in it: a second
napari layer on the same data array (no copy of the voxels) that is added, removed and moved with it, takes its
display settings (shown or hidden, opacity, colours, contrast, blending, transform, name, selected label, ...) and is
redrawn when the main layer's data change in place (a run's tiles, painting, undo) or are replaced (the final
labels). The active layer is mirrored too. Mirrors cannot be edited: painting, the layer list, undo and the volumes
stay with the main viewer's layers.
"""
from __future__ import annotations

from typing import Any

from napari.components import ViewerModel
from napari.layers import Layer
from napari.qt import QtViewer
from napari.utils.events.event import WarningEmitter
from qtpy.QtCore import QObject, QTimer

# Settable layer properties a mirror does not take: its data (shared or re-pointed instead), the thumbnail, and what
# belongs to editing in the main canvas (mode, brush, cursor).
NOT_MIRRORED = frozenset({"data", "thumbnail", "mode", "editable", "locked", "cursor", "cursor_size", "help",
                          "mouse_pan", "mouse_zoom", "brush_size", "contiguous", "n_edit_dimensions",
                          "preserve_labels", "auto_contrast"})
# Events after which the main layer's voxels changed in place: painting (labels_update, paint); set_data is also sent
# by slicing, which the mirror's own slider does (see MirrorViewer._on_set_data).
CHANGED_IN_PLACE = ("labels_update", "paint")


def mirrored_properties(layer: Any) -> list[str]:
    """The properties of ``layer`` a mirror follows: each one with an event of its own name and a setter."""
    kind = type(layer)
    names = []
    for name, emitter in layer.events.emitters.items():
        attribute = getattr(kind, name, None)
        if (name not in NOT_MIRRORED and not isinstance(emitter, WarningEmitter) and isinstance(attribute, property)
                and attribute.fset is not None):
            names.append(name)
    return names


def mirror_of(layer: Any) -> Any:
    """A new layer of ``layer``'s kind on the same data array with the same settings; not editable."""
    data, state, kind = layer.as_layer_data_tuple()
    mirror = Layer.create(data, state, kind)
    mirror.editable = False
    return mirror


class MirrorViewer(QObject):
    """A :class:`ViewerModel` and its :class:`QtViewer` whose layers mirror those of ``main`` (a napari viewer, not a
    plugin's proxy of one). Call :meth:`close` to take it apart."""

    def __init__(self, main: Any, title: str) -> None:
        super().__init__()
        self.main = main
        self.model = ViewerModel(title=title)
        self.model.theme = main.theme
        self.qt_viewer = QtViewer(self.model, show_welcome_screen=False)
        self._mirrors: dict[Any, Any] = {}  # main layer -> its mirror
        self._layer_connections: dict[Any, list[tuple[Any, Any]]] = {}  # main layer -> (its emitter, our callback)
        self._slices: dict[Any, tuple] = {}  # main layer -> the main viewer's slice at its last set_data
        self._stale: list[Any] = []
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(0)  # one redraw per pass of the event loop, however many tiles or strokes came
        self._redraw.timeout.connect(self._refresh_stale)
        self._connections = ((main.layers.events.inserted, self._on_inserted),
                             (main.layers.events.removed, self._on_removed),
                             (main.layers.events.moved, self._match_order),
                             (main.layers.selection.events.active, self._on_active),
                             (self.model.events.status, self._on_status))
        for index, layer in enumerate(main.layers):
            self._add(index, layer)
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self._on_active()

    def mirror(self, layer: Any) -> Any:
        """The mirror of main layer ``layer`` (None if it has none)."""
        return self._mirrors.get(layer)

    # ---- layers added, removed, moved, selected -----------------------------------------------------
    def _add(self, index: int, layer: Any) -> None:
        mirror = mirror_of(layer)
        self._mirrors[layer] = mirror
        events = layer.events
        connections = [(getattr(events, name), self._on_property) for name in mirrored_properties(layer)]
        connections += [(events.data, self._on_data), (events.set_data, self._on_set_data)]
        connections += [(getattr(events, name), self._on_changed) for name in CHANGED_IN_PLACE
                        if name in events.emitters]
        for emitter, callback in connections:
            emitter.connect(callback)
        self._layer_connections[layer] = connections
        self._slices[layer] = self._main_slice()  # napari sliced it on insertion, before this was connected
        self.model.layers.insert(index, mirror)

    def _on_inserted(self, event: Any) -> None:
        self._add(event.index, event.value)

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        mirror = self._mirrors.pop(layer, None)
        self._disconnect(layer)
        if mirror is not None and mirror in self.model.layers:
            self.model.layers.remove(mirror)

    def _disconnect(self, layer: Any) -> None:
        self._slices.pop(layer, None)
        for emitter, callback in self._layer_connections.pop(layer, ()):
            emitter.disconnect(callback)

    def _match_order(self, *_: object) -> None:
        """Put the mirrors in the main viewer's order (napari draws the last layer on top)."""
        for index, layer in enumerate(self.main.layers):
            mirror = self._mirrors.get(layer)
            if mirror is not None and self.model.layers.index(mirror) != index:
                self.model.layers.move(self.model.layers.index(mirror), index)

    def _on_active(self, *_: object) -> None:
        self.model.layers.selection.active = self._mirrors.get(self.main.layers.selection.active)

    def _on_status(self, event: Any) -> None:
        """What is under the mouse in this canvas (the value of each layer there) shows in napari's status bar."""
        self.main.status = event.value

    # ---- settings and data ---------------------------------------------------------------------------
    def _on_property(self, event: Any) -> None:
        mirror = self._mirrors.get(event.source)
        if mirror is not None:
            setattr(mirror, event.type, getattr(event.source, event.type))

    def _on_data(self, event: Any) -> None:
        """The main layer got a new array (the final labels): the mirror takes it too."""
        mirror = self._mirrors.get(event.source)
        if mirror is not None and mirror.data is not event.source.data:
            mirror.data = event.source.data
            mirror.editable = False  # napari makes a layer editable again with new data

    def _on_set_data(self, event: Any) -> None:
        """napari sends set_data after slicing the main layer and after ``refresh()`` (how a run shows new tiles):
        only the latter changed the data, and it leaves the main viewer's slice as it was."""
        shown = self._main_slice()
        if self._slices.get(event.source) == shown:
            self._on_changed(event)
        self._slices[event.source] = shown

    def _main_slice(self) -> tuple:
        """What decides the main viewer's slice: the axes' order, 2D or 3D, and the point off the screen's axes."""
        dims = self.main.dims
        return tuple(dims.order), dims.ndisplay, tuple(dims.point[axis] for axis in dims.not_displayed)

    def _on_changed(self, event: Any) -> None:
        if event.source in self._mirrors and event.source not in self._stale:
            self._stale.append(event.source)
            self._redraw.start()

    def _refresh_stale(self) -> None:
        stale, self._stale = self._stale, []
        for layer in stale:
            mirror = self._mirrors.get(layer)
            if mirror is not None:
                mirror.refresh(thumbnail=False, highlight=False, extent=False)  # the slice only: no list shows it

    # ---- taking it apart ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop mirroring, remove the mirrors and close the canvas (it may already be gone with its window)."""
        self._redraw.stop()
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections = ()
        for layer in list(self._mirrors):
            self._disconnect(layer)
        self._mirrors.clear()
        self._stale.clear()
        self.model.layers.clear()
        try:
            self.qt_viewer.close()
            self.qt_viewer.setParent(None)  # nothing in Qt holds it now: it goes when the last reference does
        except RuntimeError:  # its window was closed and deleted it already
            pass

"""Where the model was unsure, for the review: each result's uncertainty, its regions to check, the optional heat
overlay over it and the jump to a region.

The engine gives a run's uncertainty per voxel on the input grid: 0 where the model was sure, 100 where its two most
likely structures scored the same. The worker summarises it after the run, off the GUI thread (:func:`summarise`:
the volume at or above the engine's ``UNCERTAIN_THRESHOLD``, 50, where the most likely structure was at most 50
percentage points ahead of the next, and its connected regions, largest first). This controller keeps each
result's summary while the result is in the viewer, adds or removes the "Uncertainty" image layer over it (not a
result: never saved, never an edit), removes the layer when a run starts, and moves the views to a region.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from tilewise.engine import UNCERTAIN_THRESHOLD, Result, UncertainRegion, uncertain_regions, uncertain_volume_ml

from ..geometry import geometry_from_layer, layer_transform
from ..layers import META_OVERLAY
from .weak import connect_weakly

if TYPE_CHECKING:  # the worker imports summarise from here, and the run controller imports the worker
    from .results import ResultsController
    from .run import RunController

REGIONS_KEPT = 10
"""The largest unsure regions the review lists (the list scrolls)."""
OVERLAY_NAME = "Uncertainty"
OVERLAY_OPACITY = 0.6
DARK_BELOW = 0.2
"""The overlay's colours start at 20 of 100: below, black, which additive blending adds nothing of, so the anatomy
where the model was sure shows as it is."""


@dataclass(frozen=True)
class UncertaintyReview:
    """A result's uncertainty (uint8, 0-100, on the labels' grid) and what the review lists of it."""

    uncertainty: np.ndarray = field(repr=False)
    regions: tuple[UncertainRegion, ...]
    """The largest connected regions of unsure voxels, largest first (at most :data:`REGIONS_KEPT`)."""
    unsure_ml: float
    """The volume of the unsure voxels (uncertainty at least ``UNCERTAIN_THRESHOLD``), in mL."""


def summarise(result: Result) -> UncertaintyReview | None:
    """The review's summary of an engine result's uncertainty (None when the run computed none). Looks at every voxel
    of the volume: call it off the GUI thread."""
    uncertainty = result.uncertainty
    if uncertainty is None:
        return None
    regions = uncertain_regions(uncertainty, result.geometry, labels=result.labels, threshold=UNCERTAIN_THRESHOLD,
                                limit=REGIONS_KEPT)
    unsure_ml = uncertain_volume_ml(uncertainty, result.geometry, threshold=UNCERTAIN_THRESHOLD)
    return UncertaintyReview(uncertainty=uncertainty, regions=tuple(regions), unsure_ml=float(unsure_ml))


def heat_colormap() -> Any:
    """napari's 'inferno' from :data:`DARK_BELOW` up, black below it."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    steps = np.linspace(0.0, 1.0, 33)
    inferno = np.asarray(ensure_colormap("inferno").map(steps))
    colours = np.vstack([[0.0, 0.0, 0.0, 1.0], inferno])
    controls = np.concatenate([[0.0], DARK_BELOW + (1.0 - DARK_BELOW) * steps])
    return Colormap(colors=colours, controls=controls, name="tilewise unsure")


class UncertaintyController(QObject):
    """The uncertainty of each result in ``viewer`` and the one overlay layer that shows a result's."""

    changed = Signal()  # a result's summary came or went, or the overlay was added or removed: show it again

    def __init__(self, viewer: Any, run: RunController, results: ResultsController,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._run = run
        self._results = results
        self._reviews: dict[Any, UncertaintyReview] = {}  # result layer -> its summary
        self._pending: UncertaintyReview | None = None    # the summary of the run going on, until its layer exists
        self.overlay: Any = None
        """The "Uncertainty" image layer while it is in the viewer (None otherwise)."""
        self._overlay_of: Any = None  # the result it shows
        run.started.connect(self._on_run_started)
        run.succeeded.connect(self._on_run_succeeded)
        results.changed.connect(self._drop_gone)
        self._on_layer_removed_call = connect_weakly(viewer.layers.events.removed, self._on_layer_removed)

    def review_of(self, layer: Any) -> UncertaintyReview | None:
        """The uncertainty summary of result ``layer`` (None for anything else, or a run without one)."""
        return self._reviews.get(layer) if layer is not None else None

    def overlay_shown(self, layer: Any) -> bool:
        """True while the overlay shows result ``layer``'s uncertainty."""
        return self.overlay is not None and self._overlay_of is layer and layer is not None

    def show_overlay(self, layer: Any, shown: bool) -> None:
        """Add the overlay of result ``layer``'s uncertainty on top of it (replacing another result's), or remove it;
        what is selected in the layer list stays selected."""
        if not shown:
            if self.overlay_shown(layer):
                self._remove_overlay()
            return
        review = self._reviews.get(layer)
        if review is None or self.overlay_shown(layer):
            return
        self._remove_overlay()
        from napari.layers import Image

        overlay = Image(review.uncertainty, name=OVERLAY_NAME, colormap=heat_colormap(), contrast_limits=(0, 100),
                        blending="additive", opacity=OVERLAY_OPACITY, metadata={META_OVERLAY: True},
                        **layer_transform(geometry_from_layer(layer)))
        selection = self.viewer.layers.selection
        active, selected = selection.active, set(selection)
        self._results.attach(overlay, layer)  # before it is added: it stays on top, selecting it reviews ``layer``
        self.overlay, self._overlay_of = overlay, layer
        self.viewer.add_layer(overlay)
        selection.active = active  # napari selects a new layer; the person's selection stays
        selection.update(selected)
        self.changed.emit()

    def go_to(self, layer: Any, region: UncertainRegion) -> None:
        """Move the views to ``region`` of result ``layer``: the sliders to its centre (so every view shows it), the
        main view centred on it, the result selected."""
        reference = self._results.image_of(layer)
        reference = reference if reference is not None and reference in self.viewer.layers else layer
        world = np.asarray(reference.data_to_world(tuple(int(i) for i in region.centre)), dtype=float)[-3:]
        dims = self.viewer.dims
        offset = dims.ndim - 3
        dims.set_point([offset + axis for axis in range(3)], [float(value) for value in world])
        centre = [float(world[axis - offset]) for axis in dims.displayed]
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari 0.9 moved the camera to viewer.scene
        camera.center = tuple([0.0] * (3 - len(centre)) + centre)
        self.viewer.layers.selection.active = layer

    # ---- runs and layers ------------------------------------------------------------------------
    def _on_run_started(self, worker: Any) -> None:
        """A run starts: the overlay goes (what it shows is about to be replaced); the run's summary is awaited."""
        self._pending = None
        self._remove_overlay()
        worker.uncertainty.connect(self._on_summarised)

    def _on_summarised(self, review: UncertaintyReview | None) -> None:
        self._pending = review  # the worker's signals arrive in order: this one just before its result

    def _on_run_succeeded(self, *_: object) -> None:
        review, self._pending = self._pending, None
        layer = self._run.result_layer
        if review is not None and layer is not None:
            self._reviews[layer] = review
            self.changed.emit()

    def _drop_gone(self) -> None:
        """Forget the summaries of results that left the viewer (replaced, closed); their overlay goes with them."""
        gone = [layer for layer in self._reviews if layer not in self.viewer.layers]
        for layer in gone:
            del self._reviews[layer]
            if self._overlay_of is layer:
                self._remove_overlay()
        if gone:
            self.changed.emit()

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.overlay:  # the person deleted it in the layer list
            self.overlay, self._overlay_of = None, None
            self.changed.emit()

    def _remove_overlay(self) -> None:
        """Remove the overlay; when it was selected, its result is selected instead (the review stays on it)."""
        overlay, result = self.overlay, self._overlay_of
        self.overlay, self._overlay_of = None, None
        layers = self.viewer.layers
        if overlay is not None and overlay in layers:
            if overlay in layers.selection and result in layers:
                layers.selection.active = result
            layers.remove(overlay)
            self.changed.emit()

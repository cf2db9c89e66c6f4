"""The labels layer that fills in while a run goes on, then holds the final result.

Only the GUI thread touches it. Tile regions are queued as they arrive and written at most ~10 times a second, so a
fast run does not flood the viewer with redraws; each write copies just the tile's region, and napari redraws only
the slice on screen (in a 2D view). What the review panel shows travels in the layer's metadata, under the
``META_*`` keys.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer
from tilewise.engine import Geometry

from .colors import labels_colormap
from .geometry import layer_transform
from .volumes import voxel_volume_ml

META_NAMES = "tilewise_label_names"      # {value: name}
META_COUNTS = "tilewise_voxel_counts"    # {value: voxels}, once the run has ended
META_VOXEL_ML = "tilewise_voxel_ml"      # volume of one voxel in mL (None for a 2D image)
META_SOURCES = "tilewise_sources"        # [input file or DICOM folder, ...] the labels were made from
META_GEOMETRY = "tilewise_geometry"      # the input's Geometry: where the labels lie, and how Save writes them
META_PREVIEW = "tilewise_preview"        # True while a run fills the layer in, False once it is a result
META_PRESET = "tilewise_preset"          # the name of the preset the result was made with
META_DICOM_FILES = "tilewise_dicom_files"  # [file, ...] of the DICOM series the labels were made from (z order)
META_ALGORITHM = "tilewise_algorithm"    # the model, folds and preset as a DICOM SEG records them (AlgorithmInfo)
META_FIT = "tilewise_fit"                # [sentence, ...]: how the image differed from the model's training data
META_OVERLAY = "tilewise_overlay"        # True on an image layer drawn over a result (its uncertainty): no opened image

UPDATE_INTERVAL_MS = 100
INTERVAL_3D_MS = 1000
MAX_INTERVAL_MS = 3000


def result_name(image: Any) -> str:
    """The name of the result of image layer ``image``: '<image> segmentation'."""
    return f"{image.name} segmentation"


def is_result(layer: Any) -> bool:
    """True for a labels layer a Tilewise run has finished (not one still filling in, not anyone else's)."""
    return getattr(layer, "metadata", {}).get(META_PREVIEW) is False


class LivePreview(QObject):
    """A labels layer on the input grid of ``geometry`` that tile events write into."""

    def __init__(self, viewer: Any, name: str, shape: tuple[int, int, int], geometry: Geometry,
                 label_values: list[int], interval_ms: int = UPDATE_INTERVAL_MS, colormap: Any = None,
                 opacity: float = 0.6, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.name = name
        self.layer = viewer.add_labels(
            np.zeros(shape, dtype=np.uint8 if max(label_values, default=0) < 256 else np.uint16),
            name=f"{name} (in progress)",
            opacity=opacity,
            colormap=colormap if colormap is not None else labels_colormap(label_values),
            metadata={**(metadata or {}), META_GEOMETRY: geometry, META_PREVIEW: True},
            **layer_transform(geometry),
        )
        self._pending: list[tuple[tuple[slice, ...], np.ndarray]] = []
        self.updates = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._interval_ms = interval_ms
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.flush)

    @classmethod
    def for_image(cls, viewer: Any, image: Any, geometry: Geometry, names: dict[int, str], sources: Sequence[Path],
                  colormap: Any, opacity: float) -> LivePreview:
        """The preview of a run on image layer ``image`` (of ``geometry``, read from ``sources``) with foreground
        labels ``names``; the review panel finds what it shows in the layer's metadata."""
        return cls(viewer, result_name(image), tuple(int(s) for s in image.data.shape), geometry,
                   sorted(names), colormap=colormap, opacity=opacity,
                   metadata={META_NAMES: names, META_VOXEL_ML: voxel_volume_ml(geometry),
                             META_SOURCES: [str(s) for s in sources]})

    def add(self, box: tuple[slice, ...] | None, labels: np.ndarray | None) -> None:
        """Queue one tile's provisional labels; the next timer tick writes every queued region at once."""
        if box is None or labels is None:
            return
        self._pending.append((tuple(box), labels))
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Write the queued regions (later tiles win where they overlap) and redraw once.

        A redraw costs little in a 2D view (one slice) but can take long in a 3D view of a large volume (napari sends
        the whole volume to the graphics card at the next paint); so in 3D the preview redraws at most once a second,
        and any redraw that took long makes the next one wait ten times as long.
        """
        if not self._pending or self.layer not in self.viewer.layers:
            self._pending.clear()
            return
        started = time.perf_counter()
        data = self.layer.data
        for box, labels in self._pending:
            data[box] = labels
        self._pending.clear()
        self.updates += 1
        self.layer.refresh()
        spent_ms = (time.perf_counter() - started) * 1000
        shortest = self._interval_ms if self.viewer.dims.ndisplay == 2 else max(self._interval_ms, INTERVAL_3D_MS)
        self._timer.setInterval(int(min(MAX_INTERVAL_MS, max(shortest, 10 * spent_ms))))

    def finish(self, labels: np.ndarray, metadata: dict[str, Any] | None = None) -> Any:
        """Replace the preview with the final labels; returns the layer, now named without '(in progress)'."""
        self._timer.stop()
        self._pending.clear()
        self.layer.metadata = {**self.layer.metadata, **(metadata or {}), META_PREVIEW: False}
        self.layer.data = labels
        if self.layer not in self.viewer.layers:  # the person deleted the preview during the run
            self.viewer.add_layer(self.layer)
        self.layer.name = self.name
        return self.layer

    def discard(self) -> None:
        """Remove the preview layer (after a cancel or a failure)."""
        self._timer.stop()
        self._pending.clear()
        if self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)

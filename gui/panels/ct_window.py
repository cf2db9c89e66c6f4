"""CT window presets: brain, soft tissue, lung and bone, as window width / level in Hounsfield units."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSizePolicy, QWidget

from ..contributions import META_MODALITY, META_WINDOW

CT_LIKE_MIN_HU = -500.0  # air is about -1000 HU: an image that goes this low is very likely a CT
DEFAULT_WINDOW = "soft_tissue"  # what a CT is first shown with, unless its DICOM files name a window
META_WINDOWED = "tilewise_windowed"  # set once a CT layer has had its first window: later choices are the person's


@dataclass(frozen=True)
class CtWindow:
    """A standard radiology window: ``width`` and ``level`` (centre) in HU."""

    key: str
    title: str
    width: float
    level: float

    @property
    def limits(self) -> tuple[float, float]:
        """(lowest, highest) HU shown, from black to white."""
        return (self.level - self.width / 2, self.level + self.width / 2)


CT_WINDOWS: tuple[CtWindow, ...] = (
    CtWindow("brain", "Brain", 80, 40),
    CtWindow("soft_tissue", "Soft tissue", 400, 40),
    CtWindow("lung", "Lung", 1500, -600),
    CtWindow("bone", "Bone", 1800, 400),
)


def looks_like_ct(channel_names: Iterable[str], layer: Any = None) -> bool:
    """True when the model's channel names say CT (nnU-Net normalises a channel named CT as CT), else when the image
    says so: its DICOM Modality, or (without one) intensities below -500 (HU of air and lung)."""
    if any(re.search(r"(?<![a-z])ct", name.lower()) for name in channel_names):  # CT, ct_arterial; not SPECT
        return True
    return image_is_ct(layer)


def image_is_ct(layer: Any) -> bool:
    """True when image ``layer`` is a CT by its own account: DICOM Modality CT, or (without a Modality) intensities
    below -500."""
    if layer is None:
        return False
    metadata = layer.metadata if hasattr(layer, "metadata") else {}
    modality = metadata.get(META_MODALITY)
    if modality:
        return modality == "CT"
    low = metadata.get("tilewise_intensity_min")
    if low is None:
        low = layer.contrast_limits_range[0]  # a layer napari read itself: its data range
    return float(low) < CT_LIKE_MIN_HU


def default_limits(layer: Any) -> tuple[float, float]:
    """The window a CT is first shown with: the one its DICOM files name, else the soft-tissue window."""
    window = layer.metadata.get(META_WINDOW) if hasattr(layer, "metadata") else None
    if window:
        width, level = (float(v) for v in window)
        return (level - width / 2, level + width / 2)
    return next(w for w in CT_WINDOWS if w.key == DEFAULT_WINDOW).limits


class CtWindowButtons(QWidget):
    """One button per CT window; the one matching the image's contrast is shown pressed."""

    applied = Signal(str)  # the key of the window applied

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layer: Any = None
        self.buttons: dict[str, QPushButton] = {}
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(4)
        for window in CT_WINDOWS:
            low, high = window.limits
            button = QPushButton(window.title)
            button.setCheckable(True)
            button.setToolTip(f"Show the image with the {window.title.lower()} window: width {window.width:g} HU, "
                              f"level {window.level:g} HU (black at {low:g}, white at {high:g} HU)")
            button.setSizePolicy(QSizePolicy.Minimum, QSizePolicy.Fixed)
            button.clicked.connect(lambda _=False, key=window.key: self.apply(key))
            row.addWidget(button)
            self.buttons[window.key] = button

    def set_layer(self, layer: Any) -> None:
        """The image layer the buttons change (None: buttons disabled); a CT image the buttons meet for the first time
        gets its default window (:func:`default_limits`)."""
        if layer is self.layer:
            return
        if self.layer is not None:
            try:
                self.layer.events.contrast_limits.disconnect(self._sync)
            except (RuntimeError, TypeError, ValueError):
                pass
        self.layer = layer
        if layer is not None:
            layer.events.contrast_limits.connect(self._sync)
            if image_is_ct(layer) and not layer.metadata.get(META_WINDOWED):  # first shown: a CT window
                layer.metadata = {**layer.metadata, META_WINDOWED: True}
                layer.contrast_limits = default_limits(layer)
        self.setEnabled(layer is not None)
        self._sync()

    def apply(self, key: str) -> None:
        """Set the image's contrast limits to window ``key``."""
        window = next(w for w in CT_WINDOWS if w.key == key)
        if self.layer is None:
            return
        self.layer.contrast_limits = window.limits
        self._sync()
        self.applied.emit(key)

    def current(self) -> str | None:
        """The key of the window the image is shown with, or None."""
        if self.layer is None:
            return None
        low, high = (float(v) for v in self.layer.contrast_limits)
        for window in CT_WINDOWS:
            if abs(low - window.limits[0]) < 1e-3 and abs(high - window.limits[1]) < 1e-3:
                return window.key
        return None

    def _sync(self, *_: object) -> None:
        current = self.current()
        for key, button in self.buttons.items():
            button.setChecked(key == current)

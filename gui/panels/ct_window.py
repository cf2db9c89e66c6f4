"""CT window presets: brain, soft tissue, lung and bone, as window width / level in Hounsfield units."""
from __future__ import annotations

import re

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSizePolicy, QWidget

CT_LIKE_MIN_HU = -500.0  # air is about -1000 HU: an image that goes this low is very likely a CT


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
    """True when the model's channel names say CT, or the image goes below -500 (HU of air and lung)."""
    if any(re.search(r"(?<![a-z])ct", name.lower()) for name in channel_names):  # CT, ct_arterial; not SPECT
        return True
    if layer is None:
        return False
    low = layer.metadata.get("tilewise_intensity_min") if hasattr(layer, "metadata") else None
    if low is None:
        low = layer.contrast_limits_range[0]  # a layer napari read itself: its data range
    return float(low) < CT_LIKE_MIN_HU


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
        """The image layer the buttons change (None: buttons disabled)."""
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

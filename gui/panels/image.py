"""Choosing the image: one image layer per input channel of the model, CT windows for a CT, Open image… and Open
from PACS…"""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..controllers.run import State
from ..framing import install_framing
from ..layers import META_OVERLAY
from ..orientation import OrientationButtons, install_orientation
from .common import ElidingComboBox, breakable, shrinkable
from .ct_window import CtWindowButtons, looks_like_ct


class ImagePanel(QWidget):
    """A list of the viewer's image layers per model channel, the CT windows, and Open image… and Open from PACS…
    with a busy bar.

    The lists follow the viewer's layers as they are added, renamed and removed.
    """

    changed = Signal()  # another image was chosen, or the lists were rebuilt

    def __init__(self, viewer: Any, icon_colour: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._channels: list[str] = []
        self._combos_enabled = True
        self.channel_form = QFormLayout()
        self.channel_combos: list[QComboBox] = []
        self.ct_window = CtWindowButtons()
        self.ct_row = QWidget()
        ct_layout = QFormLayout(self.ct_row)
        ct_layout.setContentsMargins(0, 0, 0, 0)
        ct_title = QLabel("CT window:")
        ct_title.setToolTip("Standard radiology windows (width / level in Hounsfield units); they change only how "
                            "the image is shown, never the segmentation")
        ct_layout.addRow(ct_title, self.ct_window)

        import qtawesome

        self.open_button = QPushButton(qtawesome.icon("fa5s.file-import", color=icon_colour), "Open image…")
        self.open_button.setToolTip("Open a NIfTI, NRRD or MetaImage file, or a DICOM series: pick any file of the "
                                    "series, or its folder with Open folder")
        self.pacs_button = QPushButton(qtawesome.icon("fa5s.network-wired", color=icon_colour), "Open from PACS…")
        self.pacs_button.setToolTip("Find a study on a PACS server, and open one of its series")
        self.open_busy = QProgressBar()
        self.open_busy.setRange(0, 0)
        self.open_busy.setTextVisible(False)
        self.open_busy.setMaximumHeight(8)
        self.open_status = QLabel()
        self.open_status.setWordWrap(True)
        self.orientation = install_orientation(viewer)  # kept here: napari holds only weak references to it
        self.framing = install_framing(viewer, self.orientation)  # every opened image comes into view
        self.view_buttons = OrientationButtons(self.orientation)
        self.view_buttons.clicked.connect(self.framing.frame_selected)  # a View button resets to the image
        view_row = QFormLayout()
        view_row.addRow("View:", self.view_buttons)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.channel_form)
        layout.addLayout(view_row)
        layout.addWidget(self.ct_row)
        open_row = QHBoxLayout()
        open_row.addWidget(self.open_button)
        open_row.addWidget(self.pacs_button)
        layout.addLayout(open_row)
        layout.addWidget(self.open_busy)
        layout.addWidget(self.open_status)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)

    def image_layers(self) -> list[Any]:
        """Image layers the model can run on: 3D, grey-scale, not drawn over a result (its uncertainty)."""
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and layer.ndim == 3
                and not layer.rgb and not layer.metadata.get(META_OVERLAY)]

    def set_channels(self, channels: list[str]) -> None:
        """One list of the image layers per model channel (``channels``: their names); earlier choices are kept."""
        self._channels = list(channels)
        layers = self.image_layers()
        previous = [combo.currentData() for combo in self.channel_combos]
        while self.channel_form.rowCount():
            self.channel_form.removeRow(0)
        self.channel_combos = []
        for index, channel in enumerate(self._channels):
            combo = shrinkable(ElidingComboBox())  # a long file name shows its start and end, whole in the tooltip
            for layer in layers:
                combo.addItem(layer.name, layer.name)
            if not layers:
                combo.addItem("Open an image first", None)
            wanted = previous[index] if index < len(previous) else None
            position = combo.findData(wanted) if wanted else -1
            if position < 0 and layers:
                position = min(index, len(layers) - 1)
            combo.setCurrentIndex(max(position, 0))
            combo.currentIndexChanged.connect(self._on_choice_changed)
            combo.setEnabled(self._combos_enabled)
            combo.setProperty("channel", channel)
            self.channel_form.addRow(f"{channel}:", combo)
            self.channel_combos.append(combo)
        self._on_choice_changed()

    def chosen(self) -> list[Any]:
        """The layer chosen for each channel, in order; None where none is (no image, or the layer is gone)."""
        layers = {layer.name: layer for layer in self.image_layers()}
        return [layers.get(combo.currentData()) for combo in self.channel_combos]

    def problem(self) -> tuple[str, str] | None:
        """Why the chosen layers cannot be segmented, as a dialog's (title, message); None when they can."""
        chosen = self.chosen()
        if not chosen or any(layer is None for layer in chosen):
            return "No image", "Open an image (File > Open, or Open image…) and choose it under 2. Image."
        if len({tuple(layer.data.shape) for layer in chosen}) > 1:
            return ("Images do not match", "The chosen channel images have different sizes ("
                    + ", ".join(f"{layer.name}: {tuple(layer.data.shape)}" for layer in chosen)
                    + "). Choose images of the same scan.")
        return None

    def select(self, *layer_names: str) -> None:
        """Use these layers (by name) as the model's channels, in order."""
        for combo, name in zip(self.channel_combos, layer_names):
            index = combo.findData(name)
            if index < 0:
                raise KeyError(name)
            combo.setCurrentIndex(index)

    def show_state(self, state: State) -> None:
        """Open image… and Open from PACS… only when the dock is idle; the lists are fixed during a run; a busy bar
        while opening."""
        self._combos_enabled = state in (State.IDLE, State.SAVING)
        self.open_button.setEnabled(state is State.IDLE)
        self.pacs_button.setEnabled(state is State.IDLE)
        for combo in self.channel_combos:
            combo.setEnabled(self._combos_enabled)
        self.open_busy.setVisible(state is State.OPENING)
        self.open_status.setVisible(state is State.OPENING)

    def show_opening(self, name: str) -> None:
        """Say which file is being read."""
        self.open_status.setText(breakable(f"Opening {name}…"))
        self.open_status.setToolTip(name)

    def _on_layers_changed(self, event: Any) -> None:
        if event.type == "inserted":
            event.value.events.name.connect(self._on_layer_renamed)
        self.set_channels(self._channels)

    def _on_layer_renamed(self, *_: object) -> None:
        self.set_channels(self._channels)

    def _on_choice_changed(self, *_: object) -> None:
        for combo, layer in zip(self.channel_combos, self.chosen()):
            source = layer.metadata.get("tilewise_source") if layer is not None else ""
            combo.setToolTip(f"The image layer that holds the model's '{combo.property('channel')}' channel"
                             + (f": {layer.name}" if layer is not None else "") + (f"\n{source}" if source else ""))
        self._update_ct_window()
        self.changed.emit()

    def _update_ct_window(self) -> None:
        """Offer the CT windows for the image chosen for the model's CT channel, when the image looks like CT."""
        names = self._channels
        chosen = self.chosen()
        ct_index = next((i for i, name in enumerate(names) if looks_like_ct([name])), 0)
        target = chosen[ct_index] if ct_index < len(chosen) else None
        show = target is not None and looks_like_ct([names[ct_index]] if ct_index < len(names) else [], target)
        self.ct_window.set_layer(target if show else None)
        self.ct_row.setVisible(show)

"""Reviewing a segmentation: each label's volume in mL, show or hide single labels, the labels' opacity, Save.

The panel shows the segmentation layer it is given (the widget gives it the one selected in napari, or the selected
image's). What it shows travels in the layer: label names, voxel counts and voxel volume in its metadata, the hidden
labels in its colormap; so selecting another result shows that result's numbers and boxes. The counts follow edits
(the results controller updates them); a result with edits not yet saved says so. A TotalSegmentator task's result
shows TotalSegmentator's own statistics: each structure's volume and mean intensity (:mod:`..task_statistics`).
"""
from __future__ import annotations

import html
import weakref
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QIcon, QPainter, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from tilewise.engine import Geometry

from ..colors import display_name, label_color, labels_colormap
from ..controllers.results import ResultsController
from ..layers import META_COUNTS, META_FIT, META_GEOMETRY, META_NAMES, META_VOXEL_ML
from ..task_statistics import TaskStatistics
from ..volumes import format_ml
from .common import breakable
from .elided import ElidingCheckBox

DEFAULT_OPACITY = 0.6
MEASURED_AT_END = "Measured when the run has ended"
RUN_HINT = "Run a segmentation: each label's volume appears here, with a box to show or hide it."
NO_SELECTION_HINT = ("No result selected: select a segmentation (or its image) in the layer list to see its volumes "
                     "and save it.")


def _swatch(colour: str, size: int = 14) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(colour))
    painter = QPainter(pixmap)
    painter.setPen(QColor("#202020"))
    painter.drawRect(0, 0, size - 1, size - 1)
    painter.end()
    return QIcon(pixmap)


class ReviewPanel(QWidget):
    """Per-label volumes and visibility, the segmentation's opacity, and the Save button."""

    visibility_changed = Signal()

    def __init__(self, parent: QWidget | None = None, save_icon_colour: str = "#909090") -> None:
        super().__init__(parent)
        self.layer: Any = None
        self._results: ResultsController | None = None
        self.checks: dict[int, QCheckBox] = {}
        self.volumes: dict[int, QLabel] = {}
        self.means: dict[int, QLabel] = {}
        """A task's mean intensity per label value (empty for a result without TotalSegmentator's statistics)."""
        self._hidden: set[int] = set()
        self._names: dict[int, str] | None = None
        self._mean_header: str | None = None
        self._notice_layers: list[weakref.ref[Any]] = []

        self.hint = QLabel(RUN_HINT)
        self.hint.setWordWrap(True)
        self.table = QWidget()
        self.grid = QGridLayout(self.table)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setHorizontalSpacing(12)
        self.grid.setVerticalSpacing(2)
        self.grid.setColumnStretch(0, 1)
        self.method = QLabel()
        self.method.setWordWrap(True)
        self.method.setStyleSheet("color: palette(mid);")
        self.edited = QLabel("Edited: the changes are not saved yet.")
        self.edited.setToolTip("Save writes the edited labels; closing asks before the edits are lost")
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.fit_note = QLabel()
        """What was said before the run of the image this result was made from (hidden when nothing)."""
        self.fit_note.setWordWrap(True)
        self.fit_note.setStyleSheet("color: #f0a030;")  # amber, as above Run: worth reading, not an error

        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(DEFAULT_OPACITY * 100))
        self.opacity.setToolTip("How strongly the labels cover the image: 0 % invisible, 100 % opaque")
        self.opacity_value = QLabel()
        self.opacity_value.setMinimumWidth(40)
        self.opacity_value.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        opacity_row = QHBoxLayout()
        opacity_row.addWidget(QLabel("Label opacity:"))
        opacity_row.addWidget(self.opacity, 1)
        opacity_row.addWidget(self.opacity_value)

        import qtawesome

        self.save_button = QPushButton(qtawesome.icon("fa5s.save", color=save_icon_colour), "Save segmentation…")
        self.save_button.setToolTip("Write the labels as a file with the image's spacing, origin and orientation")
        self.save_button.setEnabled(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.hint)
        layout.addWidget(self.fit_note)
        layout.addWidget(self.table)
        layout.addWidget(self.method)
        layout.addWidget(self.edited)
        layout.addLayout(opacity_row)
        layout.addWidget(self.save_button)
        layout.addWidget(self.notice)

        self.opacity.valueChanged.connect(self._on_opacity_slider)
        self._on_opacity_slider(self.opacity.value())
        self.show_notice("")
        self.show_layer(None)

    def add_section(self, section: QWidget) -> None:
        """Show ``section`` (where the model was unsure) under the volumes, above the opacity and Save."""
        self.layout().insertWidget(self.layout().indexOf(self.edited), section)

    def show_save_state(self, enabled: bool, saving: bool) -> None:
        """Save is offered only with a result to save and nothing else going on; it says so while writing."""
        self.save_button.setEnabled(enabled)
        self.save_button.setText("Saving…" if saving else "Save segmentation…")

    # ---- public ---------------------------------------------------------------------------------
    def show_layer(self, layer: Any, hint: str = RUN_HINT, edited: bool = False) -> None:
        """Review ``layer`` (a labels layer made by a run), whose edits are unsaved when ``edited``; None: nothing to
        review, and ``hint`` says why."""
        if layer is not self.layer:
            if self.layer is not None:
                try:
                    self.layer.events.opacity.disconnect(self._on_layer_opacity)
                except (RuntimeError, TypeError, ValueError):
                    pass
            if layer is not None:
                layer.events.opacity.connect(self._on_layer_opacity)
        self.layer = layer
        self.hint.setText(hint)
        names: dict[int, str] = dict(layer.metadata.get(META_NAMES) or {}) if layer is not None else {}
        if layer is not None:
            self._hidden = self._hidden_in(layer, names)
        statistics = TaskStatistics.of(layer)
        self._rebuild_rows(names, statistics.header() if statistics is not None else None)
        if layer is not None:
            for value, check in self.checks.items():
                check.blockSignals(True)
                check.setChecked(value not in self._hidden)
                check.blockSignals(False)
            self._on_layer_opacity()
            self._apply_colormap()
        self.show_edited(edited)
        self.refresh_volumes()
        self.refresh_fit(layer)

    def refresh_fit(self, layer: Any) -> None:
        """Say, while result ``layer`` is reviewed, that its image was not what the model was trained on."""
        if layer is not self.layer:
            return
        sentences = list(layer.metadata.get(META_FIT) or []) if layer is not None else []
        text = " ".join(s if s.endswith(".") else f"{s}." for s in sentences)
        self.fit_note.setText(f"Check this result: {text} It may be wrong." if text else "")
        self.fit_note.setVisible(bool(text))

    def follow(self, results: ResultsController) -> None:
        """Review the layer ``results`` says is selected, and follow its edits and ``results``' notices."""
        self._results = results
        results.changed.connect(self._show_selected)
        results.counts_changed.connect(self._on_result_edited)
        results.edits_changed.connect(self._on_result_edited)
        results.notice.connect(self.show_notice)
        self._show_selected()

    def show_edited(self, edited: bool) -> None:
        """Say whether the layer reviewed has edits not yet saved."""
        self.edited.setVisible(bool(edited and self.layer is not None))

    def show_notice(self, text: str, layers: list[Any] | tuple[Any, ...] = ()) -> None:
        """A sentence about where results went (replaced, kept, closed with their image); '' hides it. A sentence
        about ``layers`` goes with them: it is hidden once one of them has left the viewer."""
        self._notice_layers = [weakref.ref(layer) for layer in layers]
        self.notice.setText(breakable(text))
        self.notice.setVisible(bool(text))

    def _drop_stale_notice(self) -> None:
        """Hide the notice when a layer it is about has gone (closed, or deleted in the layer list)."""
        results = self._results
        if results is None or not self._notice_layers:
            return
        if any((layer := ref()) is None or layer not in results.viewer.layers for ref in self._notice_layers):
            self.show_notice("")

    def refresh_volumes(self) -> None:
        """Show the volumes stored in the layer's metadata ('…' while they are not known), and a task's statistics."""
        layer = self.layer
        counts = layer.metadata.get(META_COUNTS) if layer is not None else None
        voxel_ml = layer.metadata.get(META_VOXEL_ML) if layer is not None else None
        statistics = TaskStatistics.of(layer) if counts is not None else None
        names = self._names or {}
        for value, label in self.volumes.items():
            if counts is None:
                label.setText("…")
                label.setToolTip(MEASURED_AT_END)
                continue
            voxels = int(counts.get(value, 0))
            from_statistics = statistics.volume(names[value], voxels) if statistics is not None else None
            if from_statistics is not None:
                label.setText(from_statistics[0])
                label.setToolTip(from_statistics[1])
            elif voxel_ml is None:
                label.setText(f"{voxels:,} px")
                label.setToolTip(f"{voxels:,} pixels (a 2D image has no volume)")
            else:
                label.setText(format_ml(voxels * voxel_ml))
                label.setToolTip(f"{voxels:,} voxels × {voxel_ml * 1000:.3g} mm³")
        for value, label in self.means.items():
            text, tip = statistics.mean(names[value]) if statistics is not None else ("…", MEASURED_AT_END)
            label.setText(text)
            label.setToolTip(tip)
        geometry = layer.metadata.get(META_GEOMETRY) if layer is not None else None
        if statistics is not None:
            self.method.setText(statistics.method())
        elif counts is not None and voxel_ml is not None and isinstance(geometry, Geometry):
            size = " × ".join(f"{s:.2f}" for s in geometry.spacing)
            self.method.setText(f"Volume = the label's voxels on the image's own grid × the voxel volume ({size} mm "
                                f"= {voxel_ml * 1000:.3g} mm³).")
        elif layer is not None and counts is None:
            self.method.setText("Volumes appear when the run has ended.")
        else:
            self.method.setText("")
        self.method.setVisible(bool(self.method.text()))

    def volume_text(self, value: int) -> str:
        """The volume shown for label ``value``."""
        return self.volumes[value].text()

    def mean_text(self, value: int) -> str:
        """The mean intensity shown for label ``value`` (a task's result only)."""
        return self.means[value].text()

    def hidden_labels(self) -> set[int]:
        """Label values whose box is unticked."""
        return set(self._hidden)

    def set_label_visible(self, value: int, visible: bool) -> None:
        """Tick or untick label ``value``."""
        self.checks[value].setChecked(visible)

    def layer_opacity(self) -> float:
        """The opacity chosen with the slider (0-1)."""
        return self.opacity.value() / 100.0

    def colormap(self, values: list[int]) -> Any:
        """The colormap for a segmentation with ``values``, hiding the unticked labels."""
        return labels_colormap(values, hidden=self._hidden)

    # ---- internals ------------------------------------------------------------------------------
    def _show_selected(self) -> None:
        results = self._results
        self._drop_stale_notice()
        if results is not None:
            layer = results.reviewed()
            self.show_layer(layer, NO_SELECTION_HINT if results.any_results() else RUN_HINT,
                            results.has_unsaved_edits(layer))

    def _on_result_edited(self, layer: Any) -> None:
        if layer is self.layer and self._results is not None:
            self.refresh_volumes()
            self.show_edited(self._results.has_unsaved_edits(layer))

    @staticmethod
    def _hidden_in(layer: Any, names: dict[int, str]) -> set[int]:
        """The labels ``layer``'s colormap hides (fully transparent)."""
        if not names:
            return set()
        values = np.array(sorted(names))
        try:
            alpha = np.asarray(layer.colormap.map(values))[:, 3]
        except (AttributeError, TypeError, ValueError, IndexError):
            return set()
        return {int(value) for value, a in zip(values, alpha) if a == 0}

    def _rebuild_rows(self, names: dict[int, str], mean_header: str | None = None) -> None:
        """One row per label: its box, its volume and, with ``mean_header``, its mean intensity (a task's result)."""
        if names == self._names and mean_header == self._mean_header:
            return
        self._names, self._mean_header = dict(names), mean_header
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.checks, self.volumes, self.means = {}, {}, {}
        self.hint.setVisible(not names)
        self.table.setVisible(bool(names))
        if not names:
            return
        self.grid.setHorizontalSpacing(8 if mean_header else 12)  # three columns in the narrow dock
        headers = ["<b>Show label</b>", "<b>Volume</b>"] + ([f"<b>{mean_header}</b>"] if mean_header else [])
        for column, text in enumerate(headers):
            header = QLabel(text)
            if column:
                header.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
                header.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Preferred)  # the names take what is left
            self.grid.addWidget(header, 0, column, Qt.AlignRight if column else Qt.Alignment())
        for row, (value, name) in enumerate(sorted(names.items()), start=1):
            check = ElidingCheckBox(display_name(name))  # a long name never widens the dock
            check.setIcon(_swatch(label_color(value)))
            check.setChecked(value not in self._hidden)
            check.setToolTip(f"{html.escape(name)}: label value {value}. Untick to hide it in the image.")
            check.toggled.connect(lambda visible, v=value: self._on_toggled(v, visible))
            self.grid.addWidget(check, row, 0)
            self.checks[value] = check
            self.volumes[value] = self._number_cell(row, 1)
            if mean_header:
                self.means[value] = self._number_cell(row, 2)

    def _number_cell(self, row: int, column: int) -> QLabel:
        """A right-aligned, selectable number in the table."""
        cell = QLabel("…")
        cell.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        cell.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Preferred)  # as wide as its number: the names take the rest
        cell.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.grid.addWidget(cell, row, column, Qt.AlignRight)
        return cell

    def _on_toggled(self, value: int, visible: bool) -> None:
        if visible:
            self._hidden.discard(value)
        else:
            self._hidden.add(value)
        self._apply_colormap()
        self.visibility_changed.emit()

    def _apply_colormap(self) -> None:
        """Give the layer the colormap of the ticked labels (only when it differs: a new colormap redraws it)."""
        if self.layer is None or not self.checks:
            return
        values = np.array(sorted(self.checks))
        wanted = self.colormap(values.tolist())
        try:
            same = np.allclose(wanted.map(values), self.layer.colormap.map(values))
        except (AttributeError, TypeError, ValueError):
            same = False
        if not same:
            self.layer.colormap = wanted

    def _on_opacity_slider(self, value: int) -> None:
        self.opacity_value.setText(f"{value} %")
        if self.layer is not None and abs(self.layer.opacity - value / 100.0) > 1e-6:
            self.layer.opacity = value / 100.0

    def _on_layer_opacity(self, *_: object) -> None:
        """Follow changes made in napari's own layer controls."""
        if self.layer is None:
            return
        value = round(float(self.layer.opacity) * 100)
        if value != self.opacity.value():
            self.opacity.blockSignals(True)
            self.opacity.setValue(value)
            self.opacity.blockSignals(False)
            self.opacity_value.setText(f"{value} %")

"""Where the model was unsure about the result under review: a box that shows it as a heat overlay, the unsure
volume in one sentence, and the regions to check, largest first, each a click away.

The panel follows the result the review shows (the results controller's choice) and reads what the uncertainty
controller keeps of it; it is hidden for a result without an uncertainty map (a TotalSegmentator task's, a run
still going on).
"""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QLabel, QListWidget, QListWidgetItem, QSizePolicy, QVBoxLayout, QWidget
from tilewise.engine import UncertainRegion

from ..colors import display_name
from ..controllers.results import ResultsController
from ..controllers.uncertainty import UncertaintyController, UncertaintyReview
from ..layers import META_NAMES
from ..volumes import format_ml

UNSURE = ("Unsure: the two structures the model found most likely there scored close to each other (the most likely "
          "one at most 50 points ahead on a scale of 100), so the label could as well be the other one.")
OVERLAY_TIP = ("Colours the image where the model was unsure: dark where it hesitated little, yellow where two "
               "structures tied. The colours are only shown, never saved with the segmentation.")
VISIBLE_ROWS = 4
"""Rows the list shows at once; it scrolls for the rest."""
NAMES_SHOWN = 2
"""Structures named in a row (the most frequent in the region first)."""


def structure_name(value: int, names: dict[int, str]) -> str:
    """Label ``value``'s name for people ('background' for 0)."""
    return display_name(names.get(value, "background" if value == 0 else f"label {value}"))


def region_text(number: int, region: UncertainRegion, names: dict[int, str]) -> str:
    """'1. 4.20 mL — grey matter / white matter': the region's rank, volume and its most frequent structures."""
    structures = [structure_name(value, names) for value in region.labels[:NAMES_SHOWN]]
    return f"{number}. {format_ml(region.volume_ml)}" + (f" — {' / '.join(structures)}" if structures else "")


class RegionsPanel(QWidget):
    """The overlay's box, the unsure volume and the list of regions to check of the result reviewed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layer: Any = None
        self.review: UncertaintyReview | None = None
        """What the list shows: the reviewed result's uncertainty, or the last one shown while none is reviewed."""
        self._results: ResultsController | None = None
        self._uncertainty: UncertaintyController | None = None

        self.overlay_box = QCheckBox("Show where the model is unsure")
        self.overlay_box.setToolTip(OVERLAY_TIP)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setToolTip(UNSURE)
        self.list = QListWidget()
        self.list.setToolTip("Click a region to show it in every view")
        self.list.setTextElideMode(Qt.ElideRight)  # the number and volume stay; long structure names shorten
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.list.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)  # never wider than the dock
        self.list.setUniformItemSizes(True)
        # the row gone to stays marked once the list has lost the focus
        self.list.setStyleSheet("QListWidget::item:selected { background: palette(highlight); "
                                "color: palette(highlighted-text); }")
        self.empty = QLabel("No uncertain regions")
        self.empty.setToolTip(UNSURE)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        for widget in (self.overlay_box, self.summary, self.list, self.empty):
            layout.addWidget(widget)
        self.overlay_box.toggled.connect(self._on_box_toggled)
        self.list.itemClicked.connect(self._on_item_chosen)
        self.list.itemActivated.connect(self._on_item_chosen)  # Enter on a row, as a click
        self.setVisible(False)

    def follow(self, results: ResultsController, uncertainty: UncertaintyController) -> None:
        """Show the uncertainty of the result ``results`` says is reviewed, as ``uncertainty`` keeps it."""
        self._results, self._uncertainty = results, uncertainty
        results.changed.connect(self.refresh)
        uncertainty.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Show the reviewed result's uncertainty (hidden when it has none) and whether its overlay is shown."""
        if self._results is None or self._uncertainty is None:
            return
        layer = self._results.reviewed()
        review = self._uncertainty.review_of(layer)
        self.layer = layer
        self.setVisible(review is not None)
        if review is not None and review is not self.review:  # another result: its own list
            self.review = review
            self._fill(review, dict(layer.metadata.get(META_NAMES) or {}))
        self.overlay_box.blockSignals(True)
        self.overlay_box.setChecked(self._uncertainty.overlay_shown(layer))
        self.overlay_box.blockSignals(False)

    def _fill(self, review: UncertaintyReview, names: dict[int, str]) -> None:
        """The sentence and the rows of ``review``. Kept while nothing is reviewed for a moment (napari clears its
        selection before it selects another layer), so the row gone to stays chosen."""
        self.list.clear()
        unsure = f"The model was unsure about {format_ml(review.unsure_ml)}." if review.unsure_ml > 0 else \
            "The model was sure of every voxel."
        self.summary.setText(f"{unsure} Regions to check, largest first:" if review.regions else unsure)
        for number, region in enumerate(review.regions, start=1):
            item = QListWidgetItem(region_text(number, region, names))
            every = ", ".join(structure_name(value, names) for value in region.labels)
            item.setToolTip(f"{format_ml(region.volume_ml)} where the model was unsure (on average "
                            f"{region.mean_uncertainty:.0f} of 100){': ' + every if every else ''}. Click to go there.")
            self.list.addItem(item)
        rows = min(len(review.regions), VISIBLE_ROWS)
        if rows:
            self.list.setFixedHeight(rows * self.list.sizeHintForRow(0) + 2 * self.list.frameWidth())
        self.list.setVisible(bool(rows))
        self.empty.setVisible(not rows)

    def _on_box_toggled(self, shown: bool) -> None:
        if self._uncertainty is not None and self.layer is not None:
            self._uncertainty.show_overlay(self.layer, shown)

    def _on_item_chosen(self, item: QListWidgetItem) -> None:
        uncertainty = self._uncertainty
        if uncertainty is None or self.review is None or uncertainty.review_of(self.layer) is not self.review:
            return
        uncertainty.go_to(self.layer, self.review.regions[self.list.row(item)])

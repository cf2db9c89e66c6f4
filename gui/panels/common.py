"""Small helpers the panels share: narrow combo boxes, icons in the colour of napari's theme, the dock's column."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QGroupBox, QScrollArea, QVBoxLayout, QWidget


def shrinkable(combo: QComboBox) -> QComboBox:
    """Let a combo box narrower than its longest item (the dock stays narrow; the list still shows it all)."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(12)
    return combo


def icon_colour(viewer: Any) -> str:
    """The icon colour of ``viewer``'s theme, as '#rrggbb'."""
    try:
        from napari.utils.theme import get_theme

        return get_theme(viewer.theme).icon.as_hex()
    except Exception:  # noqa: BLE001 - any theme problem: a neutral grey still shows on light and dark
        return "#909090"


def titled_column(owner: QWidget, sections: Sequence[tuple[str, QWidget]]) -> None:
    """Lay ``sections`` out in ``owner`` as titled boxes one under the other, in an area that scrolls vertically;
    every combo box in them may be narrower than its items."""
    content = QWidget()
    layout = QVBoxLayout(content)
    for title, section in sections:
        box = QGroupBox(title)
        QVBoxLayout(box).addWidget(section)
        layout.addWidget(box)
    layout.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(content)
    scroll.setFrameShape(QScrollArea.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # long texts wrap or elide instead
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    for combo in content.findChildren(QComboBox):
        shrinkable(combo)

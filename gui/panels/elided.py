"""Widgets that shorten a text too long for the narrow dock, keeping the part a reader needs (the whole text stays in
``text()`` and in the tooltip)."""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QCheckBox, QSizePolicy, QStyle, QStyleOptionButton, QStylePainter

from .common import ElidingComboBox

MIN_NAME_PX = 60
"""The narrowest an :class:`ElidingCheckBox`'s text may become before the dock has to grow."""


class ElidingCheckBox(QCheckBox):
    """A check box whose text, when the column is too narrow for it, shows with '…' in the middle ('common ca…ery
    right'); it never widens the dock."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        policy = self.sizePolicy()
        policy.setHorizontalPolicy(QSizePolicy.Preferred)  # a check box's own policy never shrinks below its text
        self.setSizePolicy(policy)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        hint = super().minimumSizeHint()
        room = self.fontMetrics().horizontalAdvance(self.text()) - MIN_NAME_PX
        return QSize(hint.width() - max(room, 0), hint.height())

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        option = QStyleOptionButton()
        self.initStyleOption(option)
        field = self.style().subElementRect(QStyle.SE_CheckBoxContents, option, self)
        room = field.width() - (option.iconSize.width() + 4 if not option.icon.isNull() else 0)
        option.text = self.fontMetrics().elidedText(self.text(), Qt.ElideMiddle, max(room, 0))
        QStylePainter(self).drawControl(QStyle.CE_CheckBox, option)


class ModelComboBox(ElidingComboBox):
    """The model list: a model folder's name shortened in the middle (both ends stay readable), a TotalSegmentator
    task's entry at its end, so that its name ('totalseg:total') always shows."""

    def elide_mode(self) -> Qt.TextElideMode:
        """At the end for a TotalSegmentator task, else in the middle."""
        return Qt.ElideRight if str(self.currentData() or "").startswith("totalseg:") else Qt.ElideMiddle

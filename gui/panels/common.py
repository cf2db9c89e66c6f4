"""Small helpers the panels share: narrow combo boxes, icons in the colour of napari's theme, the dock's steps.

The dock is a column of numbered steps (:func:`titled_column`). Each step collapses to its title and a one-line
summary of what was chosen in it (a click on the title opens or closes it), so the whole workflow fits on a small
screen. Two optional signals on a step's section drive the column:

- ``summary_changed(str)``, with a ``summary()`` method giving the current one: the section's own one-line summary.
  Its step collapses when the summary first becomes non-empty (the choice is made, e.g. a model) and opens again
  when it becomes empty (nothing to choose from).
  A section without this signal is summarised by the current texts of its combo boxes (those outside a collapsible
  part such as Advanced settings) and stays as the person left it.
- ``collapse_previous()``: the steps before this one are done (a run starts). As many of them as needed for this
  step to show whole, first to last, collapse to their summaries (on a large screen none do).
- ``bring_into_view(widget)``: a warning in the section has just appeared; the column scrolls as little as needed
  for it to show.
- ``reveal_next()``: the steps after this one open, and the end of the last one is brought into view (a finished run
  shows Review and its Save button): first by collapsing the done steps before this one as above, then, if that is
  not enough (many labels), by scrolling. It stays in view while the steps settle, until the person scrolls or opens
  or closes a step.
"""
from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from functools import partial
from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox, QGroupBox, QLabel, QPushButton, QScrollArea, QSizePolicy, QStyle, QStyleOptionComboBox, QStylePainter,
    QVBoxLayout, QWidget,
)
from superqt import QCollapsible

OPEN_MARK, CLOSED_MARK = "▾", "▸"
LONG_WORD = re.compile(r"[^\s<>&;]{24,}")  # a file name without spaces: a word-wrapped label could not break it
SUMMARY_SEPARATOR = " · "


def breakable(text: str) -> str:
    """``text`` with every long word (a file or layer name) breakable after '_', '-', '.' and '/' and every 24
    characters (a zero-width space), so a word-wrapped label wraps it instead of widening the dock."""
    def soften(match: re.Match[str]) -> str:
        word = re.sub(r"([_\-./\\])", "\\1\u200b", match.group(0))
        return re.sub(r"([^\u200b]{24})(?=[^\u200b])", "\\1\u200b", word)

    return LONG_WORD.sub(soften, text)


def shrinkable(combo: QComboBox) -> QComboBox:
    """Let a combo box narrower than its longest item (the dock stays narrow; the list still shows it all)."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(min(combo.minimumContentsLength() or 12, 12))  # a panel may ask for fewer
    return combo


def icon_colour(viewer: Any) -> str:
    """The icon colour of ``viewer``'s theme, as '#rrggbb'."""
    try:
        from napari.utils.theme import get_theme

        return get_theme(viewer.theme).icon.as_hex()
    except Exception:  # noqa: BLE001 - any theme problem: a neutral grey still shows on light and dark
        return "#909090"


class ElidingComboBox(QComboBox):
    """A combo box that shows a text too long for it with '…' in the middle (both ends of a model name stay
    readable); its list is as wide as its longest item."""

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        painter = QStylePainter(self)
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        painter.drawComplexControl(QStyle.CC_ComboBox, option)
        field = self.style().subControlRect(QStyle.CC_ComboBox, option, QStyle.SC_ComboBoxEditField, self)
        option.currentText = self.fontMetrics().elidedText(option.currentText, self.elide_mode(),
                                                           max(field.width(), 0))
        painter.drawControl(QStyle.CE_ComboBoxLabel, option)

    def elide_mode(self) -> Qt.TextElideMode:
        """Where the shown item's text is shortened: in the middle."""
        return Qt.ElideMiddle

    def showPopup(self) -> None:  # noqa: N802 - Qt override
        view = self.view()
        view.setTextElideMode(Qt.ElideMiddle)
        view.setMinimumWidth(view.sizeHintForColumn(0) + view.verticalScrollBar().sizeHint().width() + 8)
        super().showPopup()

    def shown_text(self) -> str:
        """The current text as painted (elided to the field's width)."""
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        field = self.style().subControlRect(QStyle.CC_ComboBox, option, QStyle.SC_ComboBoxEditField, self)
        return self.fontMetrics().elidedText(option.currentText, Qt.ElideMiddle, max(field.width(), 0))


class SteadyLabel(QLabel):
    """A word-wrapped label that keeps, at each width, the tallest height its texts have needed, so a text refined
    in place never moves what lies below it; :meth:`release` lets it shrink again (another subject)."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self._held: dict[int, int] = {}

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - Qt override
        needed = max(super().heightForWidth(width), self._held.get(width, 0))
        self._held[width] = needed
        return needed

    def release(self) -> None:
        """Forget the heights held: the next text takes the height it needs."""
        self._held.clear()
        self.updateGeometry()


class _StepHeader(QPushButton):
    """A flat, full-width title button whose text ('▸ 1. Model · the choice') is elided to its width."""

    def __init__(self) -> None:
        super().__init__()
        self.setCheckable(True)
        self.setFlat(True)
        self.setStyleSheet("QPushButton, QPushButton:checked { text-align: left; font-weight: bold; border: none; "
                           "background: transparent; padding: 2px 0px; } QPushButton:hover { color: palette(link); }")
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)  # never widens the dock: the text is elided
        self.full_text = ""

    def set_full_text(self, text: str) -> None:
        self.full_text = text
        self.setToolTip(text)
        self._elide()

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self.full_text, Qt.ElideRight, max(self.width() - 8, 0)))


class Step(QGroupBox):
    """One step of the dock: a title that opens and closes it, and its section; closed, the title carries a one-line
    summary of the section."""

    def __init__(self, title: str, section: QWidget) -> None:
        super().__init__()
        self.title = title
        self.section = section
        self.header = _StepHeader()
        self.header.setChecked(True)
        self.setStyleSheet("QGroupBox { margin-top: 0px; }")  # no space for a group-box title: the header is one
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 2, 8, 6)
        layout.addWidget(self.header)
        layout.addWidget(section)
        self._summary = ""
        self._own_summary = hasattr(section, "summary_changed")
        self.header.toggled.connect(self._on_toggled)
        for combo in section.findChildren(QComboBox):
            combo.currentTextChanged.connect(self._refresh_summary)
        if hasattr(section, "changed"):  # a section that rebuilds its lists says so (the image panel)
            section.changed.connect(self._refresh_summary)
        if self._own_summary:
            section.summary_changed.connect(self._on_summary_changed)
            self._on_summary_changed(section.summary())
        self._refresh_summary()

    def is_open(self) -> bool:
        """True when the section shows."""
        return self.header.isChecked()

    def set_open(self, open_: bool) -> None:
        """Show (True) or hide the section, leaving its title."""
        self.header.setChecked(open_)

    def summary(self) -> str:
        """The one line the title carries while the step is closed."""
        if self._own_summary:
            return self._summary
        combos = [c for c in self.section.findChildren(QComboBox) if c.currentText() and not self._in_collapsible(c)]
        return SUMMARY_SEPARATOR.join(" ".join(c.currentText().split()) for c in combos)

    def _in_collapsible(self, widget: QWidget) -> bool:
        """True inside a collapsible part of the section (advanced settings are no part of its summary)."""
        parent = widget.parentWidget()
        while parent is not None and parent is not self.section:
            if isinstance(parent, QCollapsible):
                return True
            parent = parent.parentWidget()
        return False

    def _on_summary_changed(self, text: str) -> None:
        chosen_now = bool(text) and not self._summary
        self._summary = text
        if chosen_now:
            self.set_open(False)
        elif not text:
            self.set_open(True)
        self._refresh_summary()

    def _on_toggled(self, open_: bool) -> None:
        self.section.setVisible(open_)
        self._refresh_summary()

    def _refresh_summary(self, *_: object) -> None:
        summary = "" if self.is_open() else self.summary()
        mark = OPEN_MARK if self.is_open() else CLOSED_MARK
        self.header.set_full_text(f"{mark} {self.title}" + (f"{SUMMARY_SEPARATOR}{summary}" if summary else ""))


class StepColumn(QScrollArea):
    """The steps one under the other, in an area that scrolls vertically."""

    def __init__(self, sections: Sequence[tuple[str, QWidget]]) -> None:
        super().__init__()
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setSpacing(6)
        self.steps = [Step(title, section) for title, section in sections]
        self._pinned: tuple[Step, Step] | None = None  # (the step that revealed, the step kept in view)
        for step in self.steps:
            layout.addWidget(step)
            step.header.clicked.connect(self._unpin)
            if hasattr(step.section, "collapse_previous"):
                step.section.collapse_previous.connect(partial(self.collapse_before, step))
            if hasattr(step.section, "reveal_next"):
                step.section.reveal_next.connect(partial(self.reveal_after, step))
            if hasattr(step.section, "bring_into_view"):
                step.section.bring_into_view.connect(self.bring_into_view)
        layout.addStretch(1)
        self.setWidgetResizable(True)
        self.setWidget(content)
        self.setFrameShape(QScrollArea.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # long texts wrap or elide instead
        bar = self.verticalScrollBar()
        bar.rangeChanged.connect(self._keep_pinned_in_view)
        bar.actionTriggered.connect(self._unpin)  # the person scrolled (wheel, arrows, dragging)

    def step(self, title: str) -> Step:
        """The step titled ``title``."""
        return next(step for step in self.steps if step.title == title)

    def collapse_before(self, step: Step) -> None:
        """Collapse done steps before ``step`` until it shows whole, and show the column so at once (the caller may go
        on with work on this thread before the event loop would lay it out and paint it)."""
        if self._fit(step, step):
            self._lay_out_now()
            self.viewport().repaint()

    def reveal_after(self, step: Step) -> None:
        """Open the steps after ``step`` and keep the end of the last one in view while they settle."""
        later = self.steps[self.steps.index(step) + 1:]
        for other in later:
            other.set_open(True)
        if later:
            self._pinned = (step, later[-1])
            QTimer.singleShot(0, self._keep_pinned_in_view)

    def bring_into_view(self, widget: QWidget) -> None:
        """Scroll down or up as little as needed for ``widget`` (a warning that just appeared) to show whole: now,
        and once more when the steps have settled (a layout request travels up the steps one event at a time)."""
        self._scroll_to(widget)
        QTimer.singleShot(50, partial(self._scroll_to_if_alive, weakref.ref(widget)))

    def _scroll_to_if_alive(self, reference: weakref.ref) -> None:
        widget = reference()
        if widget is not None:
            self._scroll_to(widget)

    def _scroll_to(self, widget: QWidget) -> None:
        try:
            chain, parent = [], widget.parentWidget()
            while parent is not None and parent is not self.widget():
                chain.append(parent)
                parent = parent.parentWidget()
        except RuntimeError:  # Qt deleted it meanwhile
            return
        self._lay_out_now()
        for parent in reversed(chain):  # outer first: each places its children in the size it was given
            if parent.layout() is not None:
                parent.layout().activate()
        top = widget.mapTo(self.widget(), widget.rect().topLeft()).y()
        bar, height = self.verticalScrollBar(), self.viewport().height()
        if top + widget.height() > bar.value() + height:
            bar.setValue(min(top, top + widget.height() + 4 - height))
        elif top < bar.value():
            bar.setValue(top)

    def show_end_of(self, step: Step) -> None:
        """Scroll as little as needed for the bottom of ``step`` to show."""
        self._lay_out_now()
        self.ensureVisible(0, step.geometry().bottom(), 0, 4)

    def _lay_out_now(self) -> None:
        """Place the steps for their current sizes now, not at the next pass of the event loop."""
        for step in self.steps:  # first each step's own size (its minimum follows its section's visibility)
            step.layout().activate()
        layout = self.widget().layout()
        layout.invalidate()
        layout.activate()

    def _fit(self, done_before: Step, target: Step) -> bool:
        """Collapse the open steps with a summary before ``done_before``, first to last, while the end of ``target``
        lies below the visible area; True if any collapsed."""
        if not self.isVisible():
            return False
        changed = False
        for other in self.steps[: self.steps.index(done_before)]:
            if self._bottom_of(target) <= self.viewport().height():
                break
            if other.is_open() and other.summary():
                other.set_open(False)
                changed = True
        return changed

    def _bottom_of(self, target: Step) -> int:
        """Where the end of ``target`` lies in the column (pixels from its top), from the steps' size hints."""
        layout = self.widget().layout()
        margins = layout.contentsMargins()
        width = self.viewport().width() - margins.left() - margins.right()
        bottom = margins.top()
        for step in self.steps:
            bottom += step.heightForWidth(width) if step.hasHeightForWidth() else step.sizeHint().height()
            if step is target:
                break
            bottom += layout.spacing()
        return bottom

    def _keep_pinned_in_view(self, *_: object) -> None:
        if self._pinned is not None:
            done_before, target = self._pinned
            self._fit(done_before, target)
            self.show_end_of(target)

    def _unpin(self, *_: object) -> None:
        self._pinned = None


def titled_column(owner: QWidget, sections: Sequence[tuple[str, QWidget]]) -> StepColumn:
    """Lay ``sections`` out in ``owner`` as numbered steps that open and close (see the module's docstring), one
    under the other in an area that scrolls vertically; every combo box in them may be narrower than its items.
    Returns the column."""
    column = StepColumn(sections)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(column)
    for combo in column.widget().findChildren(QComboBox):
        shrinkable(combo)
    return column

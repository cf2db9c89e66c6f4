"""The dock holds its layout on a 1366 x 768 screen: long file names elide or wrap (the whole name in a tooltip), the
dock never grows wider than its area, the Advanced lists are not clipped, the wording is plain, and a message about
a layer goes with that layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from gui_fixtures import open_image, quick_timing
from qtpy.QtCore import QPoint, Qt
from qtpy.QtWidgets import QAbstractButton, QComboBox, QDockWidget, QLabel
from tilewise.gui.panels.common import StepColumn

SMALL_SCREEN_WINDOW = (1366, 728)
LONG_NAME = ("patient_0001_CT_abdomen_portal_venous_phase_3mm_reconstruction_soft_tissue_kernel_B30f_"
             "series_0004_acquired_2026-12-06")


def outside(column: StepColumn) -> list[str]:
    """The visible labels, buttons and lists of the dock that reach past the right edge of its area."""
    right = column.viewport().width()
    found = []
    for kind in (QLabel, QAbstractButton, QComboBox):
        for widget in column.widget().findChildren(kind):
            if widget.isVisible() and widget.width() > 0:
                edge = widget.mapTo(column.viewport(), QPoint(widget.width(), 0)).x()
                if edge > right + 1:
                    found.append(f"{type(widget).__name__} {getattr(widget, 'text', lambda: '')()[:40]!r}: {edge}")
    return found



@pytest.fixture(autouse=True)
def no_first_fold_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo model's first-fold timing answers at once: a teardown would wait seconds for its thread."""
    quick_timing(monkeypatch)

def on_a_small_screen_with_the_narrowest_dock(viewer, widget) -> None:
    """The window as maximised on a 1366 x 768 screen, the Tilewise dock as narrow as it gets."""
    window = viewer.window._qt_window
    window.resize(*SMALL_SCREEN_WINDOW)
    dock = widget.parentWidget()
    while not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window.resizeDocks([dock], [widget.minimumWidth()], Qt.Horizontal)


def test_long_names_plain_words_and_advanced_on_a_small_screen(gui, qtbot, tmp_path: Path) -> None:
    viewer, widget = gui
    on_a_small_screen_with_the_narrowest_dock(viewer, widget)
    [column] = widget.findChildren(StepColumn)
    widget.settings_panel.advanced.expand(animate=False)
    qtbot.wait(50)
    width = widget.width()
    path = tmp_path / f"{LONG_NAME}.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 16, 16), -1000, np.int16)), str(path))
    widget.image_panel.show_opening(path.name)  # what the step says while it reads the file
    widget.image_panel.open_status.show()
    qtbot.wait(50)
    assert widget.width() == width and not outside(column), "the name wraps in the dock"
    [layer] = open_image(qtbot, widget, path)

    qtbot.waitUntil(widget.image_panel.ct_row.isVisible)  # a CT: its window buttons are the widest row
    qtbot.wait(50)
    assert widget.width() == width, "the dock never grows wider"
    assert not outside(column), outside(column)
    assert column.horizontalScrollBar().maximum() == 0, "nothing is wider than the dock's area"
    [combo] = widget.image_panel.channel_combos
    shown = combo.shown_text()
    assert "…" in shown and shown != layer.name, "a long name is shortened in the middle"
    assert layer.name in combo.toolTip() and str(path) in combo.toolTip(), "whole, with its file, in the tooltip"

    panel = widget.settings_panel
    content = panel.advanced.content()
    for row in (panel.mirroring, panel.overlap, panel.precision, panel.device, panel.backend, panel.nnunet_exact):
        bottom = row.mapTo(content, QPoint(0, row.height())).y()
        assert row.isVisible() and bottom <= content.height(), f"{row} is clipped by the Advanced section"
    panel.device.showPopup()
    view = panel.device.view()
    assert view.width() >= view.sizeHintForColumn(0), "the list shows its items whole"
    panel.device.hidePopup()
    texts = [w.text() for kind in (QLabel, QAbstractButton) for w in panel.findChildren(kind) if w.isVisible()]
    assert "Overlap between tiles:" in texts and "Exact nnU-Net output" in texts
    assert not any("Tile step" in text or "own file" in text for text in texts)
    panel.overlap.setValue(25)
    assert panel.choice().preset.tile_step == 0.75


def test_a_message_about_a_layer_goes_with_it(gui, qtbot, ct_case: Path) -> None:
    viewer, widget = gui
    [image] = open_image(qtbot, widget, ct_case)
    other = viewer.add_image(np.zeros((4, 4, 4), np.float32), name="other")
    widget.results.notice.emit(f"'x' stays on top of {image.name}: untick it to see the image alone.", [image])
    notice = widget.review.notice
    assert notice.isVisibleTo(widget)
    viewer.layers.remove(other)
    assert notice.isVisibleTo(widget), "another layer went: the message stays"
    viewer.layers.remove(image)
    assert not notice.isVisibleTo(widget) and notice.text() == "", "its layer went: so did the message"

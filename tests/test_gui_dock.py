"""Closing only the Tilewise panel (its x) during a run cancels the run cleanly; the viewer stays usable."""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from napari.layers import Labels
from napari.utils.progress import progress
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QApplication, QMessageBox

import model_factory
from tilewise.gui import _gc
from tilewise.gui.widget import TilewiseWidget

RUN_TIMEOUT_MS = 180_000



def _start_in_a_closable_panel(viewer, qtbot, settings: Path, model: Path, case: Path):
    """Dock a widget, open the case and start a long run; only weak references leave this function (as in the app,
    where nothing but the dock holds the widget)."""
    widget = TilewiseWidget(viewer, settings=QSettings(str(settings), QSettings.IniFormat))
    dock = viewer.window.add_dock_widget(widget, name="Tilewise", area="right")
    widget.settings_panel.device.setCurrentIndex(widget.settings_panel.device.findData("cpu"))
    widget.settings_panel.backend.setCurrentIndex(widget.settings_panel.backend.findData("torch"))  # a long run
    widget.model_panel.select(model)
    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(case)
    widget.settings_panel.select_preset("reference")
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.run_started.connect(lambda worker: worker.finished.connect(lambda: outcomes.append("thread ended")))
    assert widget.start_run()
    qtbot.waitUntil(lambda: widget.run.preview is not None and widget.run.preview.updates >= 1, timeout=RUN_TIMEOUT_MS)
    return weakref.ref(widget), widget.run.worker.token, dock, outcomes


def test_closing_the_panel_during_a_run_cancels_it(make_napari_viewer, qtbot, tmp_path: Path, ct_model: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(QMessageBox, "critical", staticmethod(lambda *a, **k: QMessageBox.Ok))
    viewer = make_napari_viewer(show=True)
    case = model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(64, 80, 72), seed=5)
    widget_ref, token, dock, outcomes = _start_in_a_closable_panel(
        viewer, qtbot, tmp_path / "settings.ini", ct_model, case)
    assert [layer for layer in viewer.layers if isinstance(layer, Labels)], "the preview is filling in"

    dock.title.close_button.click()  # the x of the panel, not of the window
    assert token.cancelled, "closing the panel cancels the run at once (it stops before the next batch)"
    assert "Tilewise" not in viewer.window._wrapped_dock_widgets
    qtbot.waitUntil(lambda: "cancelled" in outcomes, timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: "thread ended" in outcomes, timeout=10_000)
    assert outcomes.count("cancelled") == 1 and "done" not in outcomes
    assert [layer.name for layer in viewer.layers] == ["big_0000"], "the partial labels are removed"
    assert not any(bar.desc.startswith("Tilewise") for bar in progress._all_instances)
    assert not _gc.paused()

    for _ in range(3):  # the panel is gone for good once the run has ended: no thread outlives it
        QApplication.processEvents()
        gc.collect()
    assert widget_ref() is None, "nothing keeps the closed panel (and the model it loaded) alive"
    viewer.add_image(viewer.layers["big_0000"].data, name="still usable")
    assert len(viewer.layers) == 2


def test_closing_the_panel_when_idle_changes_nothing(make_napari_viewer, qtbot, tmp_path: Path, ct_case: Path) -> None:
    viewer = make_napari_viewer(show=True)
    widget = TilewiseWidget(viewer, settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    dock = viewer.window.add_dock_widget(widget, name="Tilewise", area="right")
    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(ct_case)
    dock.title.close_button.click()
    assert not widget.running and [layer.name for layer in viewer.layers] == ["ct_0000"]
    viewer.window.add_dock_widget(widget, name="Tilewise again", area="right")  # it can be docked again
    assert widget.parent() is not None
    widget.shutdown()


SMALL_SCREEN_WINDOW = (1366, 728)  # a maximised window on a 1366 x 768 screen, less the title bar
LARGE_SCREEN_WINDOW = (1920, 1040)


def _in_view(column, widget) -> bool:
    """``widget`` shows whole in the dock's scroll area, without scrolling."""
    viewport = column.viewport()
    top_left = widget.mapTo(viewport, widget.rect().topLeft())
    bottom_right = widget.mapTo(viewport, widget.rect().bottomRight())
    return widget.isVisible() and viewport.rect().contains(top_left) and viewport.rect().contains(bottom_right)


def _run_the_sample(make_napari_viewer, qtbot, tmp_path: Path, window: tuple[int, int]):
    """Run the demo model on the sample with Advanced settings open (the tallest the steps get) in a window of
    ``window`` pixels; returns the widget and its steps."""
    from tilewise.gui.panels.common import StepColumn
    from tilewise.resources import sample_path

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*window)
    widget = TilewiseWidget(viewer, settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    viewer.window.add_dock_widget(widget, name="Tilewise", area="right")
    widget.settings_panel.device.setCurrentIndex(widget.settings_panel.device.findData("cpu"))
    widget.settings_panel.backend.setCurrentIndex(widget.settings_panel.backend.findData("torch"))
    widget.settings_panel.select_preset("preview")
    widget.settings_panel.advanced.expand(animate=False)
    [column] = widget.findChildren(StepColumn)
    model_step = column.steps[0]
    assert not model_step.is_open(), "a chosen model shows as one line"
    assert "TilewiseDemoBrain" in model_step.header.full_text
    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(sample_path())
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
        assert _in_view(column, widget.run_panel), "the running step shows whole as soon as Run is clicked"
    assert blocker.args == ["done"]
    qtbot.waitUntil(lambda: _in_view(column, widget.review.save_button), timeout=5_000)
    return widget, column


def test_every_step_and_save_show_on_a_1366_x_768_screen_after_a_run(make_napari_viewer, qtbot,
                                                                     tmp_path: Path) -> None:
    widget, column = _run_the_sample(make_napari_viewer, qtbot, tmp_path, SMALL_SCREEN_WINDOW)
    _, image_step, speed_step, run_step, review_step = column.steps
    assert review_step.is_open() and run_step.is_open()
    assert not image_step.is_open() and image_step.header.full_text.endswith("sample_t1"), "done steps collapsed"
    assert all(_in_view(column, step.header) for step in column.steps), "every step is one click away"
    assert column.verticalScrollBar().value() == 0, "and nothing had to scroll"
    if not speed_step.is_open():
        assert "Preview" in speed_step.header.full_text, "a collapsed step says what was chosen in it"
        speed_step.header.click()  # opened again for another preset
        assert speed_step.is_open() and widget.settings_panel.preset.isVisible()
    widget.shutdown()


def test_on_a_large_screen_the_steps_stay_open(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    widget, column = _run_the_sample(make_napari_viewer, qtbot, tmp_path, LARGE_SCREEN_WINDOW)
    assert all(step.is_open() for step in column.steps[1:]), "only the chosen model shows as one line"
    assert column.verticalScrollBar().value() == 0
    widget.shutdown()


def test_a_long_model_name_is_elided_in_the_middle_with_the_whole_name_in_its_tooltip(qtbot, tmp_path: Path) -> None:
    from tilewise.gui.panels.model import ModelPanel

    panel = ModelPanel(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(panel)
    combo = panel.combo
    name = "Dataset291_TotalSegmentator_part1_organs_1559subj · 3d_fullres"
    combo.addItem(name, "")
    combo.setCurrentIndex(combo.count() - 1)
    combo.setFixedWidth(220)
    panel.show()
    shown = combo.shown_text()
    assert shown != name and "…" in shown
    head, tail = shown.split("…")
    assert name.startswith(head) and name.endswith(tail) and len(head) > 3 and len(tail) > 3
    if panel.current() is not None:
        assert combo.currentText() in combo.toolTip() and str(panel.current().path) in combo.toolTip()

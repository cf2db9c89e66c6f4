"""The Run step says, before Run, when the chosen image is not what the model was trained on (the engine's
suitability check, run off the GUI thread), in plain words, and the person can still run it."""
from __future__ import annotations

from pathlib import Path

import pytest
from gui_fixtures import open_image, quick_timing
from image_factory import ct_like
from qtpy.QtCore import QPoint
from tilewise.gui.controllers.suitability import SuitabilityCheck
from tilewise.gui.layers import META_FIT
from tilewise.gui.panels.common import StepColumn
from tilewise.resources import sample_path

CHECK_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 180_000


@pytest.fixture(autouse=True)
def no_first_fold_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo model's first-fold timing answers at once: a teardown would wait seconds for its thread."""
    quick_timing(monkeypatch)


def test_the_demo_brain_model_warns_before_run_about_a_ct(gui, qtbot, tmp_path: Path) -> None:
    viewer, widget = gui  # the demo model (brain T1 MR) is the default
    viewer.window._qt_window.resize(1366, 728)
    widget.settings_panel.advanced.expand(animate=False)  # the Segment step lies below the dock's area now
    warning = widget.run_panel.fit_warning

    open_image(qtbot, widget, ct_like(tmp_path / "ct.nii.gz"))

    qtbot.waitUntil(warning.isVisible, timeout=CHECK_TIMEOUT_MS)
    text = warning.text()
    assert "This model was trained on brain MR; this image looks like CT" in text
    assert "you can still run it" in text and "\n" not in text
    assert widget.run_panel.run_button.isEnabled(), "a warning, not a refusal"
    [column] = widget.findChildren(StepColumn)

    def in_view(widget) -> bool:
        top = widget.mapTo(column.viewport(), QPoint(0, 0)).y()
        return 0 <= top and top + widget.height() <= column.viewport().height()

    # the dock scrolls once the steps have settled (a few events later): the person sees it within a moment, with
    # Run under it
    qtbot.waitUntil(lambda: in_view(warning) and in_view(widget.run_panel.run_button), timeout=5_000)


def test_the_warning_goes_when_the_sample_t1_is_chosen(gui, qtbot, tmp_path: Path) -> None:
    _, widget = gui
    warning = widget.run_panel.fit_warning
    open_image(qtbot, widget, ct_like(tmp_path / "ct.nii.gz"))
    qtbot.waitUntil(warning.isVisible, timeout=CHECK_TIMEOUT_MS)

    open_image(qtbot, widget, sample_path())  # a brain T1, what the model was trained on: nothing to say

    qtbot.waitUntil(lambda: not warning.isVisible(), timeout=CHECK_TIMEOUT_MS)
    assert warning.text() == ""


def test_the_result_says_it_too_and_the_review_keeps_it(gui, qtbot, tmp_path: Path) -> None:
    viewer, widget = gui
    [ct] = open_image(qtbot, widget, ct_like(tmp_path / "ct.nii.gz"))
    qtbot.waitUntil(widget.run_panel.fit_warning.isVisible, timeout=CHECK_TIMEOUT_MS)
    widget.settings_panel.select_preset("preview")
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    assert blocker.args == ["done"]
    assert "Check it with care: the image differs from what the model was trained on" in \
        widget.run_panel.status.text()
    result = widget.result_layer
    [sentence] = result.metadata[META_FIT]
    assert "this image looks like CT" in sentence
    note = widget.review.fit_note
    assert note.isVisibleTo(widget) and note.text().startswith("Check this result: This model was trained on brain MR")

    [t1] = open_image(qtbot, widget, sample_path())  # a brain T1: the Run step has nothing to say of it
    qtbot.waitUntil(lambda: not widget.run_panel.fit_warning.isVisible(), timeout=CHECK_TIMEOUT_MS)
    viewer.layers.selection.active = t1
    assert not note.isVisibleTo(widget), "the T1 has no result, so nothing to say"
    viewer.layers.selection.active = result
    assert note.isVisibleTo(widget) and "looks like CT" in note.text(), "the result keeps what was said of its image"
    viewer.layers.selection.active = ct
    assert note.isVisibleTo(widget), "the CT's result is reviewed when the CT is selected"


def test_a_result_that_ends_before_its_check_is_labelled_when_the_check_ends(qtbot, tmp_path: Path) -> None:
    from tilewise.gui.contributions import read_layers
    from tilewise.resources import demo_model_dir

    class Layer:  # what a check reads of an image layer, and what a result layer holds
        def __init__(self, data, metadata) -> None:
            self.data, self.metadata = data, metadata

    [(data, kwargs, _)] = read_layers(ct_like(tmp_path / "ct.nii.gz"))
    image, result = Layer(data, kwargs["metadata"]), Layer(None, {})
    check = SuitabilityCheck()
    check.check(demo_model_dir(), [image])
    check.label_result(result, demo_model_dir(), [image])
    assert META_FIT not in result.metadata, "still checking"
    with qtbot.waitSignal(check.labelled, timeout=CHECK_TIMEOUT_MS) as blocker:
        pass
    assert blocker.args == [result] and "looks like CT" in result.metadata[META_FIT][0]
    other = Layer(None, {})
    check.label_result(other, demo_model_dir(), [Layer(data.copy(), {})])  # another image: not what was checked
    assert META_FIT not in other.metadata
    check.shutdown()

"""One result per image, and the review follows the selection: re-runs replace, cancelled re-runs keep, edited
results are never replaced silently, show/hide, volumes and Save act on the selected result, and opening an image
never hides a result without saying so."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import model_factory
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from tilewise.engine import read_volume
from tilewise.gui.panels.review import NO_SELECTION_HINT
from tilewise.gui.volumes import format_ml
from tilewise.gui.widget import TilewiseWidget
from gui_fixtures import choose, open_image

RUN_TIMEOUT_MS = 180_000


@pytest.fixture
def ct_on_torch(gui, ct_model: Path):
    """The conftest viewer with the CT test model on PyTorch (on the CPU, so a 'reference' run lasts for a cancel)."""
    choose(gui[1], ct_model, backend="torch")
    return gui


def _open(qtbot, widget: TilewiseWidget, path: Path) -> Image:
    [image] = open_image(qtbot, widget, path)
    return image


def _run(qtbot, widget: TilewiseWidget, preset: str = "preview") -> str:
    widget.settings_panel.select_preset(preset)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert widget.start_run()
    return blocker.args[0]


def _labels(viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def test_a_rerun_replaces_the_result_and_a_cancelled_one_keeps_it(ct_on_torch, qtbot, tmp_path: Path) -> None:
    viewer, widget = ct_on_torch
    image = _open(qtbot, widget, model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", shape=(64, 80, 72),
                                                          seed=5))
    assert _run(qtbot, widget) == "done"
    [first] = _labels(viewer)
    assert widget.result_layer is first and first.name == "ct_0000 segmentation"

    assert _run(qtbot, widget, "fast") == "done"
    [second] = _labels(viewer)
    assert second is not first and second.name == "ct_0000 segmentation", "replaced, not added"
    assert widget.result_layer is second and widget.results.result_of(image) is second
    assert "replaces the previous one" in widget.review.notice.text()

    hidden_during_run: list[bool] = []

    def cancel_at_first_tile(worker) -> None:
        def on_tile(_event) -> None:
            if not hidden_during_run:
                hidden_during_run.append(second.visible)
                widget.cancel_run()
        worker.tile.connect(on_tile, Qt.QueuedConnection)

    widget.run_started.connect(cancel_at_first_tile)
    assert _run(qtbot, widget, "reference") == "cancelled"
    assert hidden_during_run == [False], "the old result does not show through the tiles not yet done"
    assert _labels(viewer) == [second] and second.visible, "a cancelled re-run leaves the result as it was"
    assert widget.result_layer is second and widget.review.layer is second


def test_an_edited_result_is_kept_with_its_preset_when_the_image_is_run_again(ct_on_torch, qtbot,
                                                                              tmp_path: Path) -> None:
    viewer, widget = ct_on_torch
    image = _open(qtbot, widget, model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", seed=1))
    assert _run(qtbot, widget) == "done"
    edited = widget.result_layer
    edited.brush_size = 7
    edited.paint((20, 24, 28), 2)
    painted = np.asarray(edited.data).copy()

    assert _run(qtbot, widget, "fast") == "done"
    kept, new = _labels(viewer)
    assert kept is edited and kept.name == "ct_0000 segmentation (preview, edited)" and not kept.visible
    np.testing.assert_array_equal(np.asarray(kept.data), painted)
    assert new.name == "ct_0000 segmentation" and widget.results.result_of(image) is new
    assert "kept" in widget.review.notice.text() and kept.name in widget.review.notice.text()
    assert widget.results.has_unsaved_edits(kept) and not widget.results.has_unsaved_edits(new)


def test_review_show_hide_and_save_follow_the_selected_result(ct_on_torch, qtbot, tmp_path: Path) -> None:
    viewer, widget = ct_on_torch
    review = widget.review
    image_a = _open(qtbot, widget, model_factory.make_case(tmp_path / "a_0000.nii.gz", "3d", seed=1,
                                                            spacing=(0.8, 0.9, 2.5)))
    assert _run(qtbot, widget) == "done"
    result_a = widget.result_layer
    image_b = _open(qtbot, widget, model_factory.make_case(tmp_path / "b_0000.nii.gz", "3d", seed=2,
                                                            shape=(36, 44, 52)))
    # the new image went below the result, so the result is still in sight, and the panel says so
    qtbot.waitUntil(lambda: viewer.layers.index(image_b) < viewer.layers.index(result_a), timeout=10_000)
    assert f"'{result_a.name}' stays on top of {image_b.name}" in review.notice.text()
    assert widget.run_panel.status.text() == "Ready.", "'Done in …' went with image A: B is chosen now"
    widget.select_image(image_b.name)
    assert _run(qtbot, widget) == "done"
    result_b = widget.result_layer
    assert result_b is not result_a and len(_labels(viewer)) == 2, "one result per image"

    ml_a = 0.8 * 0.9 * 2.5 / 1000
    viewer.layers.selection.active = result_a
    assert review.layer is result_a
    assert review.volume_text(2) == format_ml(int((np.asarray(result_a.data) == 2).sum()) * ml_a)
    review.set_label_visible(2, False)
    assert result_a.colormap.map(np.array([2]))[0, 3] == 0
    assert result_b.colormap.map(np.array([2]))[0, 3] > 0, "show/hide acts on the selected result only"

    viewer.layers.selection.active = image_b  # an image: the review shows its result
    assert review.layer is result_b and review.checks[2].isChecked()
    viewer.layers.selection.active = result_a
    assert not review.checks[2].isChecked(), "each result keeps its own boxes"

    viewer.layers.selection.active = result_a
    target = tmp_path / "a_seg.nii.gz"
    assert Path(widget.suggested_save_path()).name == "a_0000_segmentation.nii.gz"
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        assert widget.save_labels(target)
    assert blocker.args == [str(target)]
    np.testing.assert_array_equal(read_volume(target).array[0], np.asarray(result_a.data))

    viewer.layers.selection.clear()
    assert review.layer is None and review.hint.text() == NO_SELECTION_HINT
    assert not widget.review.save_button.isEnabled() and widget.result_layer is None
    viewer.layers.selection.active = image_a
    assert review.layer is result_a and widget.review.save_button.isEnabled()


def test_removing_the_image_during_its_run_cancels_the_run_and_leaves_no_result(ct_on_torch, qtbot,
                                                                                tmp_path: Path) -> None:
    viewer, widget = ct_on_torch
    image = _open(qtbot, widget, model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", shape=(64, 80, 72),
                                                          seed=5))
    removed: list[bool] = []

    def remove_at_first_tile(worker) -> None:
        def on_tile(_event) -> None:
            if not removed:
                removed.append(True)
                viewer.layers.remove(image)
        worker.tile.connect(on_tile, Qt.QueuedConnection)

    widget.run_started.connect(remove_at_first_tile)
    assert _run(qtbot, widget, "reference") == "cancelled"
    assert removed and image not in viewer.layers
    assert _labels(viewer) == [], "neither the preview nor a result is left without its image"
    assert widget.results.result_of(image) is None and widget.results.results_of(image) == []
    assert not widget.results.any_results() and widget.result_layer is None

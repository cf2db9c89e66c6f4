"""Review guided by uncertainty: after a run of the demo model on the sample, the review lists the regions where the
model was unsure (largest first, as the engine finds them) and says the unsure volume; a click on a row moves the
views there; a box adds the "Uncertainty" overlay (the run's map, on the labels' grid), which is never saved and never
an edit; a new run removes it; the list fits the dock on a 1366 x 768 screen."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from gui_fixtures import docked_widget, open_image, quick_timing
from test_gui_layout import on_a_small_screen_with_the_narrowest_dock, outside
from tilewise.engine import UNCERTAIN_THRESHOLD, uncertain_regions, uncertain_volume_ml
from tilewise.gui.controllers.uncertainty import OVERLAY_NAME, REGIONS_KEPT
from tilewise.gui.panels.common import StepColumn
from tilewise.gui.panels.regions import region_text
from tilewise.gui.volumes import format_ml
from tilewise.resources import sample_path

RUN_TIMEOUT_MS = 300_000  # a wait for the run on the shared 2 cores, not a timing claim


@pytest.fixture(autouse=True)
def no_first_fold_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo model's first-fold timing answers at once: a teardown would wait seconds for its thread."""
    quick_timing(monkeypatch)


@pytest.fixture
def sample_open(make_napari_viewer, qtbot, tmp_path: Path, dialogs):
    """The demo model (its 'preview' preset on PyTorch: no OpenVINO conversion) with the sample open."""
    viewer, widget = docked_widget(make_napari_viewer, tmp_path, backend="torch")
    widget.settings_panel.select_preset("preview")
    [image] = open_image(qtbot, widget, sample_path())
    yield viewer, widget, image
    widget.shutdown()


def _run(qtbot: Any, widget: Any) -> Any:
    """Run and wait for the end; returns the engine's result."""
    results: list[Any] = []
    widget.run.succeeded.connect(lambda _request, result: results.append(result))
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert widget.start_run()
    assert blocker.args == ["done"], widget.last_error
    return results[-1]


def _overlays(viewer: Any) -> list[Any]:
    return [layer for layer in viewer.layers if layer.name.startswith(OVERLAY_NAME)]


def test_the_regions_to_check_are_the_engines_largest_first_and_a_click_goes_there(sample_open, qtbot) -> None:
    viewer, widget, image = sample_open
    on_a_small_screen_with_the_narrowest_dock(viewer, widget)
    qtbot.wait(50)
    width = widget.width()
    panel = widget.regions
    assert not panel.isVisible(), "nothing to say before a run"

    result = _run(qtbot, widget)
    layer = widget.result_layer
    assert result.uncertainty is not None and result.uncertainty.shape == result.labels.shape
    expected = uncertain_regions(result.uncertainty, result.geometry, labels=result.labels,
                                 threshold=UNCERTAIN_THRESHOLD, limit=REGIONS_KEPT)
    assert len(expected) >= 2, "the demo model hesitates somewhere between grey matter, white matter and CSF"
    qtbot.waitUntil(panel.isVisible, timeout=5_000)
    rows = [panel.list.item(row).text() for row in range(panel.list.count())]
    names = {1: "grey matter", 2: "white matter", 3: "csf"}
    assert rows == [region_text(n, region, layer.metadata["tilewise_label_names"])
                    for n, region in enumerate(expected, start=1)]
    assert rows[0].startswith(f"1. {format_ml(expected[0].volume_ml)} — ")
    assert rows[0].split(" — ")[1].split(" / ")[0] in {*names.values(), "background"}, "structures by name"
    volumes = [region.volume_ml for region in expected]
    assert volumes == sorted(volumes, reverse=True), "largest first"
    unsure = uncertain_volume_ml(result.uncertainty, result.geometry, threshold=UNCERTAIN_THRESHOLD)
    assert f"The model was unsure about {format_ml(unsure)}" in panel.summary.text()
    assert not panel.overlay_box.isChecked() and not _overlays(viewer), "the overlay waits to be asked for"

    [column] = widget.findChildren(StepColumn)
    qtbot.wait(50)
    assert widget.width() == width, "the list never widens the dock"
    assert not outside(column), outside(column)
    assert column.horizontalScrollBar().maximum() == 0
    assert panel.list.height() <= 6 * panel.list.sizeHintForRow(0) + 8, "a few rows, then it scrolls"

    viewer.layers.selection.active = image
    for row in (1, 0):
        region = expected[row]
        panel.list.setCurrentRow(row)  # a click on the row: it becomes the current one, then the list says so
        panel.list.itemClicked.emit(panel.list.item(row))
        assert panel.list.currentRow() == row, "the row gone to stays marked"
        world = np.asarray(image.data_to_world(region.centre), dtype=float)
        np.testing.assert_allclose(np.asarray(viewer.dims.point)[-3:], world, atol=1e-6)
        assert viewer.layers.selection.active is layer, "the result is selected, to edit it there"
        assert int(np.asarray(result.uncertainty)[region.centre]) >= UNCERTAIN_THRESHOLD, "the centre is unsure"


def test_the_overlay_is_the_runs_map_on_the_labels_grid_and_never_saved(sample_open, qtbot, tmp_path: Path,
                                                                        dialogs) -> None:
    viewer, widget, _image = sample_open
    result = _run(qtbot, widget)
    layer = widget.result_layer
    panel = widget.regions
    qtbot.waitUntil(panel.isVisible, timeout=5_000)
    point = tuple(viewer.dims.point)
    zoom = viewer.scene.camera.zoom

    panel.overlay_box.setChecked(True)
    [overlay] = _overlays(viewer)
    assert overlay.name == OVERLAY_NAME and type(overlay).__name__ == "Image"
    np.testing.assert_array_equal(np.asarray(overlay.data), result.uncertainty)
    for attribute in ("scale", "translate"):
        np.testing.assert_allclose(getattr(overlay, attribute), getattr(layer, attribute))
    np.testing.assert_allclose(overlay.affine.affine_matrix, layer.affine.affine_matrix)
    assert tuple(overlay.contrast_limits) == (0, 100) and overlay.blending == "additive"
    assert list(viewer.layers).index(overlay) > list(viewer.layers).index(layer), "drawn over the labels"
    qtbot.wait(100)  # what napari and the framing do with a new layer at the next turn of the event loop
    assert tuple(viewer.dims.point) == point and viewer.scene.camera.zoom == zoom, "the view stays where it was"
    assert OVERLAY_NAME not in [combo.itemText(i) for combo in widget.image_panel.channel_combos
                                for i in range(combo.count())], "not an image to segment"
    viewer.layers.selection.active = overlay
    assert widget.result_layer is layer and panel.isVisible(), "selecting the overlay reviews its result"

    path = tmp_path / "out" / "brain_segmentation.nii.gz"
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        assert widget.save_labels(path)
    assert blocker.args == [str(path)]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "one file: the segmentation"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), result.labels)
    assert not widget.results.unsaved(), "showing the overlay is no edit"
    assert overlay in viewer.layers, "saving leaves it shown"

    panel.overlay_box.setChecked(False)
    assert not _overlays(viewer)
    panel.overlay_box.setChecked(True)
    viewer.layers.remove(_overlays(viewer)[0])  # deleted in the layer list: the box follows
    assert not panel.overlay_box.isChecked()


def test_a_new_run_removes_the_overlay_and_the_list(sample_open, qtbot) -> None:
    viewer, widget, _image = sample_open
    _run(qtbot, widget)
    first = widget.result_layer
    panel = widget.regions
    qtbot.waitUntil(panel.isVisible, timeout=5_000)
    panel.overlay_box.setChecked(True)
    assert _overlays(viewer)

    started: list[int] = []
    widget.run_started.connect(lambda _worker: started.append(len(_overlays(viewer))))
    running: list[tuple[int, bool]] = []
    widget.run.tile.connect(lambda _event: running.append((len(_overlays(viewer)), panel.isVisible())))
    result = _run(qtbot, widget)
    assert started == [0], "the overlay goes as the run starts"
    assert running and set(running) == {(0, False)}, "neither overlay nor list while the new labels fill in"
    assert widget.result_layer is not first and first not in viewer.layers, "the new result replaced the old"
    assert not _overlays(viewer) and not panel.overlay_box.isChecked(), "no overlay comes back by itself"
    assert panel.isVisible() and widget.uncertainty.review_of(first) is None, "the new result's list"
    assert panel.review.uncertainty is result.uncertainty

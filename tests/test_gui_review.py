"""Review and save: each label's volume in mL, show or hide single labels, the labels' opacity, Save's folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import model_factory
import SimpleITK as sitk
from qtpy.QtCore import QSettings
from tilewise.gui.flows import save as save_flow
from tilewise.gui.colors import label_color
from tilewise.gui.controllers.files import SETTINGS_SAVE_FOLDER
from tilewise.gui.controllers.run import State
from tilewise.gui.volumes import format_ml
from tilewise.gui.widget import TilewiseWidget

RUN_TIMEOUT_MS = 180_000
SPACING = (0.8, 0.9, 2.5)  # SimpleITK (x, y, z) order, mm


@pytest.fixture
def preview_ready(gui, qtbot, tmp_path: Path, ct_model: Path):
    """The conftest viewer with the CT test model, an anisotropic CT-like case open and 'preview' chosen."""
    _, widget = gui
    widget.model_panel.select(ct_model)
    case = model_factory.make_case(tmp_path / "images" / "ct_0000.nii.gz", "3d", spacing=SPACING, seed=1)
    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(case)
    widget.settings_panel.select_preset("preview")
    return gui


def _run(qtbot, widget: TilewiseWidget) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    return blocker.args[0]


def _near(rgb: tuple[int, int, int], colour: str, tolerance: int = 3) -> bool:
    return all(abs(c - int(colour[1 + 2 * i:3 + 2 * i], 16)) <= tolerance for i, c in enumerate(rgb))


def _millilitres(text: str) -> float:
    number, unit = text.split()
    assert unit == "mL"
    return float(number.replace(",", ""))


def test_volumes_in_ml_with_label_names_and_colours(preview_ready, qtbot) -> None:
    _, widget = preview_ready
    review = widget.review
    assert review.hint.isVisible() and not review.table.isVisible(), "before a run: a hint, no table"
    assert _run(qtbot, widget) == "done"
    labels = np.asarray(widget.result_layer.data)
    voxel_ml = SPACING[0] * SPACING[1] * SPACING[2] / 1000
    assert review.table.isVisible() and not review.hint.isVisible()
    assert sorted(review.checks) == [1, 2]
    for value, name in ((1, "liver"), (2, "tumour")):  # the names of dataset.json
        expected = int((labels == value).sum()) * voxel_ml
        assert expected > 0
        assert review.checks[value].text() == name
        assert review.volume_text(value) == format_ml(expected)
        assert _millilitres(review.volume_text(value)) == pytest.approx(expected, rel=0.01)
        swatch = review.checks[value].icon().pixmap(14, 14).toImage().pixelColor(7, 7)
        assert _near((swatch.red(), swatch.green(), swatch.blue()), label_color(value)), "the square beside the name"
        rgb = widget.result_layer.colormap.map(np.array([value]))[0, :3]
        assert "#" + "".join(f"{round(c * 255):02x}" for c in rgb) == label_color(value), "...as in the image"
        assert f"color:{label_color(value)}" in widget.model_panel.labels.text()
    assert "0.80 × 0.90 × 2.50 mm" in review.method.text()
    assert format_ml(0.0123) == "0.012 mL" and format_ml(3.271) == "3.27 mL" and format_ml(1204.4) == "1,204 mL"


def test_volumes_follow_edits_of_the_labels(preview_ready, qtbot) -> None:
    _, widget = preview_ready
    assert _run(qtbot, widget) == "done"
    layer = widget.result_layer
    voxel_ml = SPACING[0] * SPACING[1] * SPACING[2] / 1000
    before = int((np.asarray(layer.data) == 2).sum())
    layer.brush_size = 9
    layer.paint((20, 24, 28), 2)  # the person paints with the brush (an undoable edit, as from the mouse)
    after = int((np.asarray(layer.data) == 2).sum())
    assert after > before
    qtbot.waitUntil(lambda: widget.review.volume_text(2) == format_ml(after * voxel_ml), timeout=10_000)


def _pixels_of(shot: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(shot[..., :3].astype(int) - rgb).max(axis=-1) <= 3).sum())


def test_unticking_a_label_hides_it_and_the_slider_sets_the_opacity(preview_ready, qtbot) -> None:
    viewer, widget = preview_ready
    assert _run(qtbot, widget) == "done"
    layer, review = widget.result_layer, widget.review
    [image] = [candidate for candidate in viewer.layers if candidate is not layer]
    data = np.asarray(layer.data).copy()
    both = [z for z in range(data.shape[0]) if {1, 2} <= set(np.unique(data[z]))]
    viewer.dims.set_point(0, layer.data_to_world((both[len(both) // 2], 0, 0))[0])
    image.visible = False  # labels on a black canvas: drawn pixels have exactly the label colours
    review.opacity.setValue(100)
    assert layer.opacity == pytest.approx(1.0)

    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert _pixels_of(shot, label_color(1)) > 50 and _pixels_of(shot, label_color(2)) > 50
    review.set_label_visible(1, False)
    assert review.hidden_labels() == {1}
    assert layer.colormap.map(np.array([1]))[0, 3] == 0 and layer.colormap.map(np.array([2]))[0, 3] == 1
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert _pixels_of(shot, label_color(1)) == 0, "an unticked label is not drawn"
    assert _pixels_of(shot, label_color(2)) > 50, "the other labels still are"
    np.testing.assert_array_equal(np.asarray(layer.data), data), "hiding never changes the labels"
    review.set_label_visible(1, True)
    assert _pixels_of(viewer.screenshot(canvas_only=True, flash=False), label_color(1)) > 50

    review.opacity.setValue(35)
    assert layer.opacity == pytest.approx(0.35) and review.opacity_value.text() == "35 %"
    layer.opacity = 0.8  # napari's own layer controls: the slider follows
    assert review.opacity.value() == 80

    review.set_label_visible(2, False)  # the choice carries over to the next run, from its first tile
    assert _run(qtbot, widget) == "done"
    assert widget.result_layer is not layer
    assert widget.result_layer.colormap.map(np.array([2]))[0, 3] == 0
    assert not review.checks[2].isChecked() and widget.result_layer.opacity == pytest.approx(0.8)


def test_save_remembers_the_last_folder(preview_ready, qtbot, dialogs, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    viewer, widget = preview_ready
    assert _run(qtbot, widget) == "done"
    asked: list[str] = []
    answers: list[str] = []

    def save_dialog(parent, suggested, dicom_seg=False):
        asked.append(str(suggested))
        return answers.pop(0)

    monkeypatch.setattr(save_flow, "ask_save_path", save_dialog)
    target = tmp_path / "exports" / "mine.nrrd"
    target.parent.mkdir()
    answers.append(str(target))
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        widget.review.save_button.click()
    assert Path(asked[0]) == tmp_path / "images" / "ct_0000_segmentation.nii.gz", "first time: the image's folder"
    assert blocker.args == [str(target)]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))),
                                  np.asarray(widget.result_layer.data))
    stored = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)  # what the next session reads
    assert stored.value(SETTINGS_SAVE_FOLDER) == str(target.parent)

    answers.append("")  # the person cancels the dialog
    widget.review.save_button.click()
    assert Path(asked[1]) == target.parent / "ct_0000_segmentation.nii.gz", "then the folder saved to last"
    assert not (widget.run.state is State.SAVING)

    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where a folder should be")
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        widget.save_labels(blocked / "seg.nii.gz")
    assert blocker.args == [""] and dialogs["critical"] and "could not be saved" in dialogs["critical"][-1][0]
    assert "Traceback" not in dialogs["critical"][-1][1]
    assert stored.value(SETTINGS_SAVE_FOLDER) == str(target.parent), "a failed save does not move the folder"

    # the first run times a forward pass on a thread and stores it: once stored, the next session times nothing
    qtbot.waitUntil(lambda: widget.estimates.timer is None, timeout=RUN_TIMEOUT_MS)
    later = TilewiseWidget(viewer, settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    assert later.suggested_save_path().parent == target.parent, "remembered across sessions"
    later.shutdown()


def test_save_never_writes_over_the_image_it_was_made_from(preview_ready, qtbot, dialogs, tmp_path: Path) -> None:
    _, widget = preview_ready
    assert _run(qtbot, widget) == "done"
    image = tmp_path / "images" / "ct_0000.nii.gz"
    original = image.read_bytes()

    assert widget.save_labels(image) is False
    errors = dialogs["critical"]
    assert errors and "not saved" in errors[-1][0] and "overwrite the input" in errors[-1][1]
    assert str(image) in errors[-1][1] and "Traceback" not in errors[-1][1]
    assert image.read_bytes() == original and sorted(p.name for p in image.parent.iterdir()) == [image.name]
    assert not (widget.run.state is State.SAVING)

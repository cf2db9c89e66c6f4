"""TotalSegmentator's tasks in the viewer, on stand-in weights (:mod:`totalseg_factory`) in a temporary
``TOTALSEG_WEIGHTS_PATH``: the model list shows the tasks (not their part folders) and what to install without
TotalSegmentator's package; a run of ``totalseg:total --fast`` from the panel gives what :class:`TaskPredictor` gives
on the same file, with one tile count over its models and its statistics in the review table; Cancel stops a
five-model run of ``totalseg:total``."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import totalseg_factory as tf

pytest.importorskip("totalsegmentator", reason="needs the totalseg extra: pip install \"tilewise[totalseg]\"")

from gui_fixtures import docked_widget, open_image  # noqa: E402
from napari.layers import Labels  # noqa: E402
from tilewise.engine import TaskPredictor, label_color, read_volume, resolve_task  # noqa: E402
from tilewise.gui.layers import META_COUNTS, META_NAMES  # noqa: E402
from tilewise.gui.task_models import INSTALL_HINT, META_STATISTICS, TaskModelInfo  # noqa: E402
from tilewise.gui.task_statistics import CUT_OFF_TEXT, EDITED_TIP  # noqa: E402
from tilewise.gui.volumes import format_ml  # noqa: E402

RUN_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The stand-in weights (built once per test process, shared with the engine's TotalSegmentator tests)."""
    return tf.standins(tmp_path_factory.getbasetemp() / "totalseg")


@pytest.fixture
def task_gui(make_napari_viewer, tmp_path: Path, dialogs: dict, standins: SimpleNamespace,
             monkeypatch: pytest.MonkeyPatch):
    """A docked panel (CPU, PyTorch) that finds the stand-in weights and nothing else."""
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(standins.weights))
    monkeypatch.delenv("nnUNet_results", raising=False)
    monkeypatch.setattr("tilewise.gui.widget.demo_model_dir", lambda: None)
    viewer, widget = docked_widget(make_napari_viewer, tmp_path, backend="torch")
    yield viewer, widget
    widget.shutdown()


def _items(widget) -> list[tuple[str, str]]:
    combo = widget.model_panel.combo
    return [(combo.itemText(i), str(combo.itemData(i))) for i in range(combo.count())]


def test_the_model_list_shows_the_tasks_not_their_part_folders(task_gui) -> None:
    _, widget = task_gui
    items = _items(widget)
    assert [text for text, _ in items] == [
        "totalseg:total · 117 structures · fast (3 mm) model installed",
        "totalseg:total_mr · 50 structures · fast (3 mm) model not installed",
        "totalseg:liver_vessels · 2 structures",
    ]
    assert not any("Dataset" in data for _, data in items), "the part folders are not models of their own"

    panel = widget.model_panel
    mr = panel.select_task("totalseg:total_mr", fast=True)
    assert mr is not None and not mr.fast, "a fast model that is not installed is not run"
    assert not panel.fast.isEnabled() and panel.fast.text() == "Fast (3 mm model): not installed"
    vessels = panel.select_task("totalseg:liver_vessels")
    assert vessels is not None and panel.fast.isHidden()
    speed = widget.settings_panel
    assert not speed.overlap.isEnabled() and speed.overlap.value() == 50, "a sub-task runs with nnU-Net's step"

    fast = panel.select_task("totalseg:total", fast=True)
    assert isinstance(fast, TaskModelInfo) and fast.name == "totalseg:total --fast" and fast.channels == ["CT"]
    assert panel.fast.isEnabled() and panel.fast.isChecked() and panel.summary() == "totalseg:total --fast"
    assert "117 structures: spleen" in panel.labels.text()
    assert speed.overlap.value() == 20, "total runs with TotalSegmentator's tile step 0.8, also --fast"
    assert not speed.mirroring.isEnabled() and not speed.mirroring.isChecked()
    total = panel.select_task("totalseg:total")
    assert total is not None and len(total.spec.parts_to_run) == 5
    assert speed.estimate.text().startswith("No time estimate for TotalSegmentator's tasks yet")
    assert speed.totals == {}, "no preset shows a time for a task"


def test_without_totalsegmentators_package_the_list_says_what_to_install(make_napari_viewer, tmp_path: Path,
                                                                         dialogs: dict, standins: SimpleNamespace,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "totalsegmentator" or m.startswith("totalsegmentator.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(standins.weights))
    monkeypatch.delenv("nnUNet_results", raising=False)
    monkeypatch.setattr("tilewise.gui.widget.demo_model_dir", lambda: None)
    _, widget = docked_widget(make_napari_viewer, tmp_path)
    try:
        panel = widget.model_panel
        assert panel.install_hint.text() == INSTALL_HINT, _items(widget)
        assert not panel.install_hint.isHidden()
        assert 'pip install "tilewise[totalseg]"' in INSTALL_HINT
        assert not any(data.startswith("totalseg:") for _, data in _items(widget))
        assert any("Dataset291" in data for _, data in _items(widget)), "its folders are plain models then"
    finally:
        widget.shutdown()


def test_a_fast_task_run_gives_the_task_predictors_labels_and_statistics(task_gui, qtbot,
                                                                         standins: SimpleNamespace) -> None:
    viewer, widget = task_gui
    [image] = open_image(qtbot, widget, standins.ct)
    widget.model_panel.select_task("totalseg:total", fast=True)
    events: list = []
    widget.run_started.connect(lambda worker: worker.tile.connect(events.append))
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert widget.start_run()
    assert blocker.args == ["done"], widget.last_error

    choice = widget.settings_panel.choice()
    predictor = TaskPredictor(resolve_task("total", fast=True, root=standins.weights), choice.preset, device="cpu")
    expected = predictor.predict(read_volume([standins.ct]), statistics=True)
    [layer] = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert layer.name == f"{image.name} segmentation"
    assert layer.data.shape == expected.labels.shape and np.array_equal(layer.data, expected.labels)
    np.testing.assert_allclose(layer.affine.affine_matrix, image.affine.affine_matrix)
    assert layer.scale.tolist() == image.scale.tolist() and layer.translate.tolist() == image.translate.tolist()
    names = {v: n for v, n in expected.label_names.items() if v}
    assert layer.metadata[META_NAMES] == names
    present = sorted(int(v) for v in np.unique(expected.labels) if v)
    assert len(present) > 5
    colours = np.asarray(layer.colormap.map(np.array(present)))[:, :3]
    wanted = np.array([[int(label_color(v)[i:i + 2], 16) / 255 for i in (1, 3, 5)] for v in present])
    np.testing.assert_allclose(colours, wanted, atol=1e-6)

    assert events and events[-1].done == events[-1].total == expected.tiles, "one tile count over the task"
    assert widget.run_panel.progress.maximum() == expected.tiles

    statistics = layer.metadata[META_STATISTICS]
    assert statistics == expected.statistics
    review = widget.review
    assert review.layer is layer and set(review.means) == set(names)
    counts = layer.metadata[META_COUNTS]
    measured = cut_off = 0
    for value, name in names.items():
        volume, mean = statistics[name]["volume"], statistics[name]["intensity"]
        if volume == 0 and counts.get(value, 0):
            assert review.volume_text(value) == CUT_OFF_TEXT and review.mean_text(value) == "–"
            cut_off += 1
        elif volume:
            assert review.volume_text(value) == format_ml(volume / 1000)
            assert review.mean_text(value) == f"{mean:.0f}" and review.means[value].toolTip().endswith(" HU")
            measured += 1
        else:
            assert review.volume_text(value) == "0 mL" and review.mean_text(value) == "–"
    assert measured and cut_off, "the test image has measured structures and structures at its edge"
    assert "TotalSegmentator's own statistics (totalseg:total --fast), on the 3 mm image" in review.method.text()

    edited = next(v for v, n in names.items() if statistics[n]["volume"])
    layer.metadata = {**layer.metadata, META_COUNTS: {**counts, edited: counts[edited] + 1}}  # as an edit leaves it
    review.refresh_volumes()
    assert review.mean_text(edited) == "–" and review.means[edited].toolTip() == EDITED_TIP
    assert review.volume_text(edited) == format_ml((counts[edited] + 1) * layer.metadata["tilewise_voxel_ml"])


def test_cancel_stops_a_five_model_task_run(task_gui, qtbot, standins: SimpleNamespace) -> None:
    viewer, widget = task_gui
    open_image(qtbot, widget, standins.ct)
    widget.model_panel.select_task("totalseg:total")
    widget.settings_panel.select_preset("reference")
    cancelled_at: list[float] = []

    def on_tile(event) -> None:
        if not cancelled_at:
            cancelled_at.append(time.perf_counter())
            widget.cancel_run()

    widget.run_started.connect(lambda worker: worker.tile.connect(on_tile))
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert widget.start_run()
    stopped = time.perf_counter() - cancelled_at[0]
    print(f"a five-model run stopped {stopped:.2f} s after Cancel")
    assert blocker.args == ["cancelled"]
    assert stopped < 10, f"stopped {stopped:.1f} s after Cancel"
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)], "no labels are kept"
    assert widget.run_panel.status.text() == "Cancelled. No labels were kept."
    assert not widget.running and widget.run.worker is None

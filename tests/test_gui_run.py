"""The Tilewise dock widget driving the real engine: run, live preview, cancel, presets, errors, save, close."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import model_factory
import SimpleITK as sitk
from napari.layers import Labels
from qtpy.QtCore import QSettings, Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication, QMessageBox
from tilewise.engine import Predictor, get_preset, load_presets, read_volume
from tilewise.engine.errors import OutOfMemoryError
from tilewise.gui.controllers.worker import plain_message
from tilewise.gui.widget import TilewiseWidget
from gui_fixtures import choose, open_image as _open

RUN_TIMEOUT_MS = 180_000


@pytest.fixture
def torch_gui(gui):
    """The conftest viewer on PyTorch: these tests cancel and scroll during runs, which OpenVINO finishes in a blink on
    the tiny test models. ``dialogs`` captures the message boxes and answers the trust question."""
    choose(gui[1], backend="torch")
    return gui


def _run(qtbot, widget: TilewiseWidget, timeout: int = RUN_TIMEOUT_MS) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=timeout) as blocker:
        widget.run_panel.run_button.click()
    return blocker.args[0]


def _save(qtbot, widget: TilewiseWidget, path) -> Path:
    """Save the result through the widget (written on a thread) and wait for the file."""
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        assert widget.save_labels(path)
    assert blocker.args[0], widget.last_error
    return Path(blocker.args[0])


def _labels_layers(viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


@pytest.fixture
def oblique_case(tmp_path: Path) -> Path:
    """A small CT-like case with a flipped direction and a non-zero origin."""
    return model_factory.make_case(tmp_path / "oblique_0000.nii.gz", "3d", direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                   origin=(12.5, -30.0, 7.0), seed=2)


@pytest.fixture
def big_case(tmp_path: Path) -> Path:
    return model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(64, 80, 72), seed=5)


def test_preview_run_gives_the_engines_labels_in_place(torch_gui, qtbot, ct_model: Path, oblique_case: Path,
                                                       tmp_path: Path) -> None:
    viewer, widget = torch_gui
    widget.model_panel.select(ct_model)
    [image] = _open(qtbot, widget, oblique_case)
    widget.settings_panel.select_preset("preview")
    tiles: list = []
    previews: list = []
    widget.run_started.connect(lambda worker: worker.tile.connect(tiles.append))
    widget.run_panel.run_button.clicked.connect(lambda: previews.append(widget.run.preview))
    started = time.perf_counter()
    assert _run(qtbot, widget) == "done"
    elapsed = time.perf_counter() - started
    assert previews[0].updates <= elapsed / 0.1 + 1, "at most ~10 redraws a second, regions coalesced"

    preset = get_preset("preview").with_overrides(backend="torch")  # the engine the torch_gui fixture chose
    expected = Predictor(ct_model, preset, device="cpu").predict(read_volume(oblique_case)).labels
    [labels] = _labels_layers(viewer)
    assert labels is widget.result_layer
    assert labels.name == "oblique_0000 segmentation"
    assert viewer.dims.axis_labels == ("axial", "coronal", "sagittal")
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
    assert len(tiles) == tiles[0].total > 1
    # image and labels share one world transform: every voxel lands on the same physical point
    for attribute in ("scale", "translate"):
        np.testing.assert_allclose(getattr(labels, attribute), getattr(image, attribute))
    np.testing.assert_allclose(labels.affine.affine_matrix, image.affine.affine_matrix)
    reference = sitk.ReadImage(str(oblique_case))
    for index_zyx in ((0, 0, 0), (3, 10, 20), (39, 47, 55)):
        physical = reference.TransformIndexToPhysicalPoint([int(i) for i in index_zyx[::-1]])
        np.testing.assert_allclose(labels.data_to_world(index_zyx), physical[::-1], atol=1e-6)
    assert not widget.running and widget.run_panel.run_button.text() == "Run segmentation"
    assert widget.review.save_button.isEnabled()

    saved = _save(qtbot, widget, tmp_path / "out" / "seg.nrrd")
    written = sitk.ReadImage(str(saved))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, getter)(), getattr(reference, getter)(), atol=1e-6)
    assert not torch_gui[1].last_error


def test_preview_fills_in_tile_regions_while_running(torch_gui, qtbot, ct_model: Path, big_case: Path) -> None:
    _, widget = torch_gui
    widget.model_panel.select(ct_model)
    _open(qtbot, widget, big_case)
    widget.settings_panel.select_preset("fast")
    seen: list[np.ndarray] = []
    widget.run_started.connect(
        lambda worker: worker.tile.connect(lambda event: seen.append(np.asarray(widget.run.preview.layer.data).copy()),
                                           Qt.QueuedConnection))
    assert _run(qtbot, widget) == "done"
    assert widget.run.preview is None
    assert seen and any(frame.any() for frame in seen), "the labels layer fills in before the run ends"
    assert not all(frame.all() for frame in seen)


def test_cancel_stops_within_one_batch_and_leaves_no_labels(torch_gui, qtbot, ct_model: Path, big_case: Path) -> None:
    viewer, widget = torch_gui
    widget.model_panel.select(ct_model)
    _open(qtbot, widget, big_case)
    widget.settings_panel.select_preset("reference")
    emitted: list[float] = []
    cancelled_at: list[float] = []

    def on_tile_in_worker(event) -> None:  # runs on the worker thread, as the engine emits
        emitted.append(time.perf_counter())

    def on_tile_in_gui(event) -> None:
        if not cancelled_at:
            cancelled_at.append(time.perf_counter())
            canvas = viewer.window._qt_viewer.canvas.native  # Esc while the image view has the keyboard
            canvas.setFocus()
            QTest.keyClick(canvas, Qt.Key_Escape)

    def connect(worker) -> None:
        worker.tile.connect(on_tile_in_worker, Qt.DirectConnection)
        worker.tile.connect(on_tile_in_gui)

    widget.run_started.connect(connect)
    window = viewer.window._qt_window
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
        assert widget.run_panel.run_button.text() == "Cancel (Esc)"
    assert blocker.args == ["cancelled"]
    assert cancelled_at, "the run reported at least one tile"
    assert len([t for t in emitted if t > cancelled_at[0]]) <= 1, "no batch may start after Cancel"
    assert len(emitted) < 27
    assert _labels_layers(viewer) == [], "a cancelled run leaves no labels"
    assert widget.run.worker is None and widget.run_panel.run_button.text() == "Run segmentation"
    assert widget.run_panel.run_button.isEnabled() and "Cancelled" in widget.run_panel.status.text()

    widget.settings_panel.select_preset("preview")
    assert _run(qtbot, widget) == "done", "Run works again after a cancel"
    assert len(_labels_layers(viewer)) == 1


def test_scrolling_focuses_the_engine_on_the_slice_on_screen(torch_gui, qtbot, ct_model: Path, big_case: Path) -> None:
    viewer, widget = torch_gui
    widget.model_panel.select(ct_model)
    [image] = _open(qtbot, widget, big_case)
    widget.settings_panel.select_preset("reference")
    emitted: list[tuple[float, object]] = []
    focused: list[tuple[float, tuple[int, int]]] = []

    def record(event) -> None:  # worker thread, as the engine emits
        emitted.append((time.perf_counter(), event))

    def scroll_then_cancel(event) -> None:
        if not focused:
            viewer.dims.set_point(0, image.data_to_world((60, 0, 0))[0])  # the person scrolls to slice 60
            focused.append((time.perf_counter(), widget.run.worker.focus.wish()[1]))
        elif len([t for t, _ in emitted if t > focused[0][0]]) >= 4:
            widget.cancel_run()

    def connect(worker) -> None:
        worker.tile.connect(record, Qt.DirectConnection)
        worker.tile.connect(scroll_then_cancel)

    widget.run_started.connect(connect)
    assert _run(qtbot, widget) == "cancelled"
    scrolled_at, focus = focused[0]
    assert focus == ("slice", (0, 60))
    after = [event for t, event in emitted if t > scrolled_at][1:]  # the batch in flight may finish first
    assert len(after) >= 2 and all(event.input_box[0].start <= 60 < event.input_box[0].stop for event in after)


def test_each_preset_shows_its_summary_and_settings(torch_gui, qtbot, make_model, tmp_path: Path) -> None:
    _, widget = torch_gui
    two_folds = make_model("3d", folds=(0, 1))
    widget.model_panel.select(two_folds)
    panel = widget.settings_panel
    assert [c.text() for c in panel.fold_checks] == ["0", "1"]
    for name, preset in load_presets().items():
        panel.select_preset(name)
        assert panel.summary.text() == preset.summary
        choice = panel.choice()
        assert choice.preset == preset.with_overrides(backend="torch")  # the engine the torch_gui fixture chose
        assert choice.folds == (("0", "1") if preset.folds == "all" else ("0",))
        assert panel.mirroring.isChecked() == preset.mirroring
        assert panel.overlap.value() == round((1 - preset.tile_step) * 100)  # 'Overlap between tiles', in %
    panel.select_preset("fast")
    panel.overlap.setValue(40)
    assert panel.choice().preset.tile_step == pytest.approx(0.6)
    assert "Changed under Advanced" in panel.summary.text()
    assert QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat).value("run/preset") == "fast"
    panel.select_preset("reference")  # resets the tile step changed above
    engines = [panel.backend.itemData(i) for i in range(panel.backend.count())]
    assert engines == ["auto", "torch", "openvino"]  # OpenVINO is installed with the test extras
    panel.backend.setCurrentIndex(engines.index("openvino"))
    assert panel.choice().preset.backend == "openvino" and not panel.is_customised()  # like Device: not a preset's
    panel.select_preset("fast")
    assert panel.choice().preset.backend == "openvino", "the engine stays when the preset changes"


def test_every_preset_runs_to_the_end(torch_gui, qtbot, ct_model: Path, tmp_path: Path) -> None:
    viewer, widget = torch_gui
    case = model_factory.make_case(tmp_path / "small_0000.nii.gz", "3d", shape=(24, 40, 40), seed=3)
    widget.model_panel.select(ct_model)
    _open(qtbot, widget, case)
    for name in load_presets():
        widget.settings_panel.select_preset(name)
        assert _run(qtbot, widget) == "done", name
        assert set(np.unique(np.asarray(widget.result_layer.data))) <= {0, 1, 2}
        assert widget.result_layer.metadata["tilewise_preset"] == name
    assert _labels_layers(viewer) == [widget.result_layer], "one result per image: each run replaced the last"


def test_unreadable_file_shows_a_plain_message(torch_gui, qtbot, dialogs, tmp_path: Path) -> None:
    viewer, widget = torch_gui
    good = model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:2000])
    assert _open(qtbot, widget, broken) == []
    [(title, text)] = dialogs["critical"]
    assert "could not be opened" in title
    assert str(broken) in text and "truncated or corrupt" in text
    assert "Traceback" not in text and len(viewer.layers) == 0


def test_image_the_model_cannot_segment_shows_a_plain_message(torch_gui, qtbot, dialogs, ct_model: Path,
                                                              tmp_path: Path) -> None:
    viewer, widget = torch_gui
    slice_path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((48, 56), np.int16)), str(slice_path))
    widget.model_panel.select(ct_model)
    _open(qtbot, widget, slice_path)
    assert _run(qtbot, widget) == "failed"
    [(_, text)] = dialogs["critical"]
    assert "2D image" in text and "3d_fullres" in text and "Traceback" not in text
    assert _labels_layers(viewer) == [] and widget.run_panel.run_button.isEnabled()


def test_checkpoint_needing_trust_asks_before_loading(torch_gui, qtbot, dialogs, ct_model: Path, ct_case: Path,
                                                      tmp_path: Path) -> None:
    viewer, widget = torch_gui
    model = tmp_path / "untrusted" / ct_model.name
    shutil.copytree(ct_model, model)
    model_factory.make_untrusted_checkpoint(model)
    executed = len(model_factory.UNTRUSTED_EXECUTIONS)
    widget.model_panel.select(model)
    _open(qtbot, widget, ct_case)
    widget.settings_panel.select_preset("preview")
    assert _run(qtbot, widget) == "failed"  # answered No
    [(title, text)] = dialogs["question"]
    assert "Trust" in title and "Traceback" not in text
    assert len(model_factory.UNTRUSTED_EXECUTIONS) == executed, "nothing was unpickled without consent"
    assert _labels_layers(viewer) == [] and not dialogs["critical"]

    dialogs["answers"].append(QMessageBox.Yes)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS,
                          check_params_cb=lambda outcome: outcome == "done"):
        widget.run_panel.run_button.click()
    assert len(_labels_layers(viewer)) == 1
    assert widget.trust.is_trusted(model), "remembered by the content of the folder's files"


def test_out_of_memory_is_explained_in_plain_words() -> None:
    text = plain_message(OutOfMemoryError("cuda", "out of memory even at batch size 1"))
    assert "ran out of memory" in text and "Preview" in text
    assert "ran out of memory" in plain_message(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))


def test_closing_the_window_during_a_run_cancels_it(make_napari_viewer, qtbot, tmp_path: Path, ct_model: Path,
                                                    big_case: Path, dialogs) -> None:
    viewer = make_napari_viewer(show=True)
    widget = TilewiseWidget(viewer, settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    viewer.window.add_dock_widget(widget, name="Tilewise")
    widget.model_panel.select(ct_model)
    _open(qtbot, widget, big_case)
    widget.settings_panel.select_preset("reference")
    widget.settings_panel.backend.setCurrentIndex(widget.settings_panel.backend.findData("torch"))  # a long run
    widget.start_run()
    worker = widget.run.worker
    qtbot.waitUntil(lambda: widget.run_panel.progress.value() >= 1, timeout=RUN_TIMEOUT_MS)
    started = time.perf_counter()
    viewer.close()
    assert worker.isFinished() and worker.token.cancelled
    assert time.perf_counter() - started < 30


def test_nnunet_exact_checkbox_gives_nnunets_own_labels(torch_gui, qtbot, ct_model: Path, oblique_case: Path) -> None:
    _, widget = torch_gui
    widget.model_panel.select(ct_model)
    _open(qtbot, widget, oblique_case)
    widget.settings_panel.select_preset("preview")
    panel = widget.settings_panel
    panel.nnunet_exact.setChecked(True)
    assert not panel.precision.isEnabled() and not panel.backend.isEnabled()
    assert panel.choice().nnunet_exact and "Changed under Advanced" in panel.summary.text()

    assert _run(qtbot, widget) == "done"

    stock = model_factory.nnunet_reference(ct_model, [oblique_case], folds=(0,), step=1.0, mirroring=False)
    np.testing.assert_array_equal(np.asarray(widget.result_layer.data), stock)
    panel.nnunet_exact.setChecked(False)
    assert panel.precision.isEnabled() and not panel.choice().nnunet_exact


def test_closing_mid_run_waits_at_most_a_second_and_ends_the_gc_pause(torch_gui, qtbot, ct_model: Path,
                                                                        big_case: Path) -> None:
    from tilewise.gui import _gc
    from tilewise.gui.controllers.worker import CLOSE_WAIT_MS, stop_quietly

    _, widget = torch_gui
    widget.model_panel.select(ct_model)
    _open(qtbot, widget, big_case)
    widget.settings_panel.select_preset("reference")  # 8 passes per tile: a run that lasts
    tiles: list = []
    widget.run_started.connect(lambda worker: worker.tile.connect(tiles.append))
    widget.run_panel.run_button.click()
    qtbot.waitUntil(lambda: len(tiles) >= 1, timeout=RUN_TIMEOUT_MS)
    worker = widget.run.worker
    assert _gc.paused()
    started = time.perf_counter()
    assert stop_quietly(worker)  # what napari calls when the window closes during the run
    waited = time.perf_counter() - started
    assert waited < CLOSE_WAIT_MS / 1000 + 0.5, f"the GUI thread waited {waited:.2f} s"
    qtbot.waitUntil(lambda: worker.isFinished(), timeout=60_000)
    qtbot.waitUntil(lambda: not _gc.paused(), timeout=10_000)

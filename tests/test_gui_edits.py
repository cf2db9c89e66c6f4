"""Edits are first-class: the volumes follow brush, fill, erase, undo and redo; unsaved edits are never lost silently;
the saved file holds the edited labels with the input's geometry."""
from __future__ import annotations

import threading
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import model_factory
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QDialog, QMessageBox
from tilewise.engine import read_volume
from tilewise.gui.controllers import edits as edits_module
from tilewise.gui.volumes import apply_change, count_change, count_labels, format_ml
from tilewise.gui.widget import TilewiseWidget

RUN_TIMEOUT_MS = 180_000
SPACING = (0.8, 0.9, 2.5)  # SimpleITK (x, y, z) order, mm
VOXEL_ML = SPACING[0] * SPACING[1] * SPACING[2] / 1000


@pytest.fixture
def segmented(gui, qtbot, tmp_path: Path, ct_model: Path):
    """The conftest viewer with the CT test model and an anisotropic, oblique CT-like case segmented with 'preview';
    returns (viewer, widget, case). ``dialogs`` answers the Save / Discard / Cancel questions and the Save dialogs."""
    viewer, widget = gui
    widget.model_panel.select(ct_model)
    case = model_factory.make_case(tmp_path / "images" / "ct_0000.nii.gz", "3d", spacing=SPACING, seed=1,
                                   direction=(0, 1, 0, -1, 0, 0, 0, 0, 1), origin=(4.0, -20.0, 11.5))
    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(case)
    widget.settings_panel.select_preset("preview")
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    assert blocker.args == ["done"]
    # a window the test closes is only hidden, not deleted (napari deletes it on close): the fixtures can then close
    # the viewer as after any test
    viewer.window._qt_window.setAttribute(Qt.WA_DeleteOnClose, False)
    return viewer, widget, case


@pytest.fixture
def napari_asks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The titles of napari's own "Close window?" questions; each is answered Cancel."""
    from napari._qt.dialogs.confirm_close_dialog import ConfirmCloseDialog

    asked: list[str] = []

    def exec_(dialog) -> int:
        asked.append(dialog.windowTitle())
        return QDialog.Rejected

    monkeypatch.setattr(ConfirmCloseDialog, "exec_", exec_)
    return asked


def _menu_action(viewer, title: str):
    """The File menu's action ``title`` ('Close Window', 'Exit'), made active as when the person picks it."""
    window = viewer.window._qt_window
    [action] = [a for a in viewer.window.file_menu.actions() if a.text().replace("&", "") == title]
    window.activateWindow()  # napari's Close Window closes the active window
    window.raise_()
    return action


def _shown_voxels(widget: TilewiseWidget) -> dict[int, str]:
    return {value: widget.review.volume_text(value) for value in (1, 2)}


def _expected(data: np.ndarray) -> dict[int, str]:
    return {value: format_ml(int((data == value).sum()) * VOXEL_ML) for value in (1, 2)}


def _save(qtbot, widget: TilewiseWidget, path: Path) -> None:
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        assert widget.save_labels(path)
    assert blocker.args == [str(path)], widget.last_error


def test_volumes_follow_brush_fill_erase_undo_and_redo_and_the_file_holds_the_edits(segmented, qtbot,
                                                                                    tmp_path: Path) -> None:
    _, widget, case = segmented
    layer = widget.result_layer
    results = widget.results
    states = [np.asarray(layer.data).copy()]
    assert _shown_voxels(widget) == _expected(states[0]) and not results.has_unsaved_edits(layer)
    assert not widget.review.edited.isVisible()

    layer.brush_size = 9
    with layer.block_history():  # one stroke: several brush dabs, one undo step, as napari's brush drag makes it
        for y in (18, 22, 26):
            layer.paint((20, y, 28), 2)
    states.append(np.asarray(layer.data).copy())
    labelled = np.argwhere(states[-1] > 0)
    layer.paint(tuple(labelled[len(labelled) // 2].tolist()), 0)  # the eraser paints the background
    states.append(np.asarray(layer.data).copy())
    piece = np.argwhere(states[-1] == 1)[0]  # a voxel of label 1: fill its connected piece (in the slice) with 2
    layer.fill(tuple(piece.tolist()), 2)
    states.append(np.asarray(layer.data).copy())
    rows = np.arange(10, 30)  # a script writes single voxels, with the undo history as napari's tools keep it
    layer.data_setitem((rows, rows + 4, rows + 8), np.where(rows % 2, 1, 0))
    states.append(np.asarray(layer.data).copy())
    for before, after in pairwise(states):
        assert (before != after).any(), "every edit changed some voxels"
    # each edit was counted from the voxels it changed, at once: no count of the whole volume is waiting
    assert _shown_voxels(widget) == _expected(states[-1])
    assert results.has_unsaved_edits(layer) and widget.review.edited.isVisible()

    for expected in reversed(states[:-1]):  # Ctrl+Z, as napari's key binding calls it, back to the run's labels
        layer.undo()
        np.testing.assert_array_equal(np.asarray(layer.data), expected)
        assert _shown_voxels(widget) == _expected(expected)
    assert not results.has_unsaved_edits(layer), "undone back to the run's labels: nothing unsaved"
    assert not widget.review.edited.isVisible()
    for expected in states[1:]:  # Ctrl+Shift+Z
        layer.redo()
        np.testing.assert_array_equal(np.asarray(layer.data), expected)
        assert _shown_voxels(widget) == _expected(expected)
    layer.undo()  # the script's voxels are taken back: the file holds brush, erase and fill
    assert results.has_unsaved_edits(layer)

    target = tmp_path / "out" / "edited.nii.gz"
    target.parent.mkdir()
    _save(qtbot, widget, target)
    assert not results.has_unsaved_edits(layer) and not widget.review.edited.isVisible()
    written, source = read_volume(target), read_volume(case)
    np.testing.assert_array_equal(written.array[0], states[-2])
    np.testing.assert_allclose(written.geometry.spacing, source.geometry.spacing, atol=1e-6)
    np.testing.assert_allclose(written.geometry.origin, source.geometry.origin, atol=1e-6)
    np.testing.assert_allclose(written.geometry.direction, source.geometry.direction, atol=1e-6)
    layer.redo()
    assert results.has_unsaved_edits(layer), "redone past the saved state: unsaved again"


def test_a_large_edit_is_counted_on_a_thread(segmented, qtbot, monkeypatch: pytest.MonkeyPatch) -> None:
    _, widget, _ = segmented
    layer = widget.result_layer
    monkeypatch.setattr(edits_module, "INLINE_VOXELS", 10)  # every edit counts as large here
    threads: list = []
    real_count = edits_module.count_labels

    def counted_on(labels):
        threads.append(threading.current_thread())
        return real_count(labels)

    monkeypatch.setattr(edits_module, "count_labels", counted_on)
    layer.brush_size = 15
    layer.paint((20, 24, 28), 1)
    edited = np.asarray(layer.data).copy()
    qtbot.waitUntil(lambda: _shown_voxels(widget) == _expected(edited), timeout=20_000)
    assert threads and all(thread is not threading.main_thread() for thread in threads)
    layer.undo()
    qtbot.waitUntil(lambda: _shown_voxels(widget) == _expected(np.asarray(layer.data)), timeout=20_000)
    layer.data = np.zeros_like(edited)  # a new array altogether (a script): counted afresh
    qtbot.waitUntil(lambda: widget.review.volume_text(1) == "0 mL", timeout=20_000)
    assert count_labels(np.asarray(layer.data)) == {0: edited.size}


def test_closing_the_window_with_unsaved_edits_asks(segmented, qtbot, dialogs, napari_asks, tmp_path: Path) -> None:
    viewer, widget, _ = segmented
    layer = widget.result_layer
    layer.brush_size = 7
    layer.paint((20, 24, 28), 2)
    window = viewer.window._qt_window
    close = _menu_action(viewer, "Close Window")
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=10_000)

    dialogs["answers"].append(QMessageBox.Cancel)
    close.trigger()  # File > Close Window
    [(title, text)] = dialogs["warning"]
    assert title == "Unsaved edits" and layer.name in text and "closing the window" in text
    assert napari_asks == [], "ours is the only question"
    assert window.isVisible() and layer in viewer.layers and widget.results.has_unsaved_edits(layer)

    dialogs["answers"].append(QMessageBox.Cancel)
    _menu_action(viewer, "Exit").trigger()  # File > Exit asks the same, and Cancel keeps the window too
    assert len(dialogs["warning"]) == 2 and napari_asks == [] and window.isVisible()

    dialogs["answers"].append(QMessageBox.Save)
    dialogs["paths"].append(tmp_path / "before_closing.nii.gz")
    edited = np.asarray(layer.data).copy()
    with qtbot.waitSignal(widget.saved, timeout=60_000):
        close.trigger()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    assert len(dialogs["warning"]) == 3, "asked once; the close that follows the save asks nothing"
    assert napari_asks == []
    np.testing.assert_array_equal(read_volume(tmp_path / "before_closing.nii.gz").array[0], edited)


def test_the_title_bars_close_with_unsaved_edits_asks_ours_only(segmented, qtbot, dialogs, napari_asks) -> None:
    from qtpy.QtGui import QCloseEvent

    viewer, widget, _ = segmented
    widget.result_layer.paint((20, 24, 28), 2)
    window = viewer.window._qt_window
    event = QCloseEvent()
    event.spontaneous = lambda: True  # as the window manager's close arrives
    dialogs["answers"].append(QMessageBox.Cancel)
    QApplication.sendEvent(window, event)
    assert not event.isAccepted() and window.isVisible()
    assert len(dialogs["warning"]) == 1 and napari_asks == []


def test_without_unsaved_edits_napari_asks_as_before(segmented, qtbot, dialogs, napari_asks) -> None:
    viewer, _widget, _ = segmented
    window = viewer.window._qt_window
    close = _menu_action(viewer, "Close Window")
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=10_000)
    close.trigger()
    assert napari_asks == ["Close Window?"] and dialogs["warning"] == []
    assert window.isVisible(), "napari's question was answered Cancel"


def test_discard_closes_the_window_without_saving(segmented, qtbot, dialogs, napari_asks, tmp_path: Path) -> None:
    viewer, widget, _ = segmented
    widget.result_layer.paint((20, 24, 28), 2)
    window = viewer.window._qt_window
    close = _menu_action(viewer, "Close Window")
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=10_000)
    dialogs["answers"].append(QMessageBox.Discard)
    close.trigger()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    assert len(dialogs["warning"]) == 1 and napari_asks == []
    assert not list(tmp_path.rglob("*segmentation*"))


def test_removing_an_edited_result_asks_and_cancel_puts_it_back(segmented, qtbot, dialogs, tmp_path: Path) -> None:
    viewer, widget, _ = segmented
    layer = widget.result_layer
    layer.paint((20, 24, 28), 2)
    edited = np.asarray(layer.data).copy()
    index = viewer.layers.index(layer)

    dialogs["answers"].append(QMessageBox.Cancel)
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: layer in viewer.layers, timeout=10_000)
    assert viewer.layers.index(layer) == index and "closing" in dialogs["warning"][-1][1]
    np.testing.assert_array_equal(np.asarray(layer.data), edited)
    layer.undo()  # the history came back with it
    assert not widget.results.has_unsaved_edits(layer)
    layer.redo()

    dialogs["answers"].append(QMessageBox.Save)
    dialogs["paths"].append(tmp_path / "kept.nii.gz")
    with qtbot.waitSignal(widget.saved, timeout=60_000):
        viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: layer not in viewer.layers, timeout=10_000)
    np.testing.assert_array_equal(read_volume(tmp_path / "kept.nii.gz").array[0], edited)
    assert len(dialogs["warning"]) == 2 and widget.result_layer is None


def test_removing_the_image_closes_its_result_asking_first_when_edited(segmented, qtbot, dialogs) -> None:
    viewer, widget, _ = segmented
    layer = widget.result_layer
    [image] = [candidate for candidate in viewer.layers if not isinstance(candidate, Labels)]
    layer.paint((20, 24, 28), 2)

    dialogs["answers"].append(QMessageBox.Cancel)
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: image in viewer.layers, timeout=10_000)
    assert layer in viewer.layers and f"closing '{image.name}'" in dialogs["warning"][-1][1]
    assert widget.results.result_of(image) is layer

    dialogs["answers"].append(QMessageBox.Discard)
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: layer not in viewer.layers, timeout=10_000)
    assert len(viewer.layers) == 0 and "closed with its image" in widget.review.notice.text()


def test_counting_the_changed_voxels_matches_counting_them_all() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(12, 16, 20)).astype(np.uint8)
    counts, history = count_labels(labels), []
    for step in range(30):
        where = tuple(rng.integers(0, n, size=50) for n in labels.shape)
        where = tuple(np.array(axis) for axis in zip(*sorted(set(zip(*where)))))  # each voxel once
        before = labels[where].copy()
        after = np.uint8(step % 4) if step % 2 else rng.integers(0, 6, size=before.size).astype(np.uint8)
        changed = before != after
        edit = [(before[changed], after if np.ndim(after) == 0 else after[changed])]
        labels[where] = after
        history.append((where, before))
        counts = apply_change(counts, count_change(edit))
        assert counts == count_labels(labels), step
    for step, (where, before) in enumerate(reversed(history)):  # undo everything, newest first
        now = labels[where].copy()
        changed = before != now
        labels[where] = before
        counts = apply_change(counts, count_change([(before[changed], now[changed])], undone=True))
        assert counts == count_labels(labels), step

"""Opening a volume never freezes the window: it is read on a thread, the layer is added on the GUI thread."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import SimpleITK as sitk
from napari.utils.progress import progress
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QDialogButtonBox
from tilewise.gui.controllers import files as files_module
from tilewise.gui.controllers.files import SETTINGS_OPEN_FOLDER
from tilewise.gui.controllers.run import State
from tilewise.gui.panels.dialogs import ImageFileDialog
from modal_dialogs import when_shown


def test_reading_runs_on_a_thread_with_a_busy_state(gui, qtbot, ct_case: Path, ct_model: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    viewer, widget = gui
    widget.model_panel.select(ct_model)
    release = threading.Event()
    readers: list[threading.Thread] = []
    real_read = files_module.read_layers

    def slow_read(path):  # a large file: reading takes as long as the test wants
        readers.append(threading.current_thread())
        assert release.wait(60)
        return real_read(path)

    monkeypatch.setattr(files_module, "read_layers", slow_read)
    assert widget.open_image(ct_case), "returns at once; the file is read meanwhile"
    assert (widget.run.state is State.OPENING) and len(viewer.layers) == 0
    busy = widget.image_panel.open_busy
    assert busy.isVisible() and busy.maximum() == 0, "an indeterminate (busy) bar"
    assert widget.image_panel.open_status.text() == "Opening ct_0000.nii.gz…"
    assert not widget.image_panel.open_button.isEnabled() and not widget.run_panel.run_button.isEnabled()
    assert not widget.open_image(ct_case), "one image at a time"

    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    qtbot.waitUntil(lambda: len(ticks) >= 10, timeout=10_000)  # the event loop runs on while the file is read
    qtbot.waitUntil(lambda: widget.run_panel.activity is not None and widget.run_panel.activity.bar is not None, timeout=10_000)
    bar = widget.run_panel.activity.bar
    assert bar in progress._all_instances and bar.desc == "Tilewise: opening ct_0000.nii.gz" and bar.total == 0
    timer.stop()

    with qtbot.waitSignal(widget.image_opened, timeout=60_000) as blocker:
        release.set()
    [layer] = blocker.args[0]
    assert readers and readers[0] is not threading.main_thread()
    assert [candidate.name for candidate in viewer.layers] == ["ct_0000"] and layer.name == "ct_0000"
    np.testing.assert_array_equal(np.asarray(layer.data),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(ct_case))).astype(np.float32))
    assert widget.image_panel.channel_combos[0].currentData() == "ct_0000"
    assert not (widget.run.state is State.OPENING) and not widget.image_panel.open_busy.isVisible()
    assert widget.image_panel.open_button.isEnabled() and widget.run_panel.run_button.isEnabled()
    assert bar not in progress._all_instances, "the activity bar is gone"
    assert widget.qsettings.value(SETTINGS_OPEN_FOLDER) == str(ct_case.parent)


def test_the_open_dialog_starts_in_the_last_folder(gui, qtbot, ct_case: Path) -> None:
    viewer, widget = gui
    asked: list[str] = []

    def pick(dialog: ImageFileDialog) -> None:  # the person picks the case: select it, then Open
        asked.append(dialog.directory().absolutePath())
        dialog.selectFile(str(ct_case))
        dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.Open).click()

    for _ in range(2):
        when_shown(ImageFileDialog, pick)
        with qtbot.waitSignal(widget.image_opened, timeout=60_000):
            widget.image_panel.open_button.click()
    assert len(asked) == 2 and asked[0] != str(ct_case.parent) and asked[1] == str(ct_case.parent)
    assert len(viewer.layers) == 2


def test_a_file_that_cannot_be_read_gives_a_dialog(gui, qtbot, dialogs, tmp_path: Path) -> None:
    viewer, widget = gui
    missing = tmp_path / "gone.nii.gz"
    with qtbot.waitSignal(widget.image_opened, timeout=60_000) as blocker:
        widget.open_image(missing)
    assert blocker.args == [[]]
    [(title, text)] = dialogs["critical"]
    assert "could not be opened" in title and str(missing) in text and "Traceback" not in text
    assert len(viewer.layers) == 0 and widget.image_panel.open_button.isEnabled() and not (widget.run.state is State.OPENING)

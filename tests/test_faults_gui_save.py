"""Faults injected into the viewer's Save: a full disk, a read-only folder, permission denied, a name that is a
folder, and a kill -9 or a SIGTERM while the file is written. Each failure reaches the person as one plain line (the
``save_failed`` signal and the dialog), never a traceback, and no file that is not whole lies under the name chosen.

A real 1 MB tmpfs and a read-only mount need root (CI runs the suite as root); without it the full disk is ENOSPC
injected at the writer's calls and the read-only case is skipped. Permission denied is a chmod'ed folder without
root, and EACCES injected at the folder's creation call as root (root ignores permissions; the viewer's Save runs in
the test's own process, which cannot drop that power and get it back).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_disks import IS_ROOT, assert_not_written, inject_full_disk, leftovers, needs_root, small_tmpfs
from tilewise.engine.data.volume import Geometry

SAVE_TIMEOUT_MS = 60_000
SHAPE = (60, 120, 150)  # (z, y, x): 1.1 MB of labels that compress little, more than a 1 MB disk holds
GEOMETRY = Geometry(SHAPE[::-1], (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
# What the viewer's Save runs on its thread, in a process of its own that the test kills mid-write.
SAVE_IN_A_PROCESS = [sys.executable, "-c", """
import sys
from pathlib import Path
import numpy as np
from tilewise.engine.data.dicom.seg import AlgorithmInfo
from tilewise.engine.data.outputs import write_output
from tilewise.engine.data.volume import Geometry
labels = np.random.default_rng(0).integers(0, 250, (400, 400, 400)).astype(np.uint8)
geometry = Geometry((400, 400, 400), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
write_output(labels, geometry, (), {}, AlgorithmInfo("test"), Path(sys.argv[1]))
"""]


def add_labels(viewer: Any, seed: int = 0) -> Any:
    """A labels layer as Tilewise makes one: its image's geometry in the metadata."""
    data = np.random.default_rng(seed).integers(0, 250, SHAPE).astype(np.uint8)
    return viewer.add_labels(data, name="segmentation", metadata={"tilewise_geometry": GEOMETRY})


def save_and_fail(qtbot: Any, widget: Any, dialogs: dict[str, list], layer: Any, target: Path) -> str:
    """Save ``layer`` at ``target`` through the viewer and return the one line ``save_failed`` carried, after
    checking it is also what the dialog shows."""
    dialogs["critical"].clear()
    with qtbot.waitSignal(widget.files.save_failed, timeout=SAVE_TIMEOUT_MS) as failed, \
            qtbot.waitSignal(widget.saved, timeout=SAVE_TIMEOUT_MS) as saved:
        assert widget.save_labels(target, layer)
    failed_target, message = failed.args
    assert failed_target == target and saved.args == [""]
    assert "\n" not in message and "Traceback" not in message and "NWAD" not in message, message
    [(_, shown)] = dialogs["critical"]
    assert shown == f"{target}: {message}" and "\n" not in shown
    return message


def test_disk_full(gui, qtbot, dialogs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capfd: pytest.CaptureFixture) -> None:
    viewer, widget = gui
    layer = add_labels(viewer)
    disk = tmp_path / "disk"
    with ExitStack() as stack:
        if IS_ROOT:
            stack.enter_context(small_tmpfs(disk))
        else:
            disk.mkdir()
            inject_full_disk(monkeypatch, disk)
        for suffix in SUFFIXES:
            message = save_and_fail(qtbot, widget, dialogs, layer, disk / f"seg{suffix}")
            assert message.startswith(f"cannot write seg{suffix} to {disk}: the disk is full"), message
            assert_not_written(disk, f"seg{suffix}")
        assert "NWAD" not in capfd.readouterr().err, "ITK's own lines are held back"
    with qtbot.waitSignal(widget.saved, timeout=SAVE_TIMEOUT_MS) as saved:  # elsewhere, the same layer saves
        assert widget.save_labels(tmp_path / "seg.nii.gz", layer)
    assert saved.args == [str(tmp_path / "seg.nii.gz")]


@needs_root
def test_read_only_folder(gui, qtbot, dialogs, tmp_path: Path) -> None:
    viewer, widget = gui
    layer = add_labels(viewer)
    disk = tmp_path / "disk"
    with small_tmpfs(disk, read_only=True):
        message = save_and_fail(qtbot, widget, dialogs, layer, disk / "seg.nii.gz")
        assert message == f"cannot write to {disk}: the folder is read-only"
        assert list(disk.iterdir()) == []


def test_permission_denied(gui, qtbot, dialogs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    viewer, widget = gui
    layer = add_labels(viewer)
    folder = tmp_path / "theirs"
    folder.mkdir()
    if IS_ROOT:
        real_mkdir = os.mkdir

        def denied(path: Any, *args: Any, **kwargs: Any) -> None:
            if Path(path).parent == folder:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", denied)
    else:
        folder.chmod(0o555)
    try:
        message = save_and_fail(qtbot, widget, dialogs, layer, folder / "seg.nii.gz")
    finally:
        folder.chmod(0o755)
    assert message == f"cannot write to {folder}: you do not have permission to write in this folder"
    assert list(folder.iterdir()) == []


def test_a_name_that_is_a_folder(gui, qtbot, dialogs, tmp_path: Path) -> None:
    viewer, widget = gui
    layer = add_labels(viewer)
    (tmp_path / "seg.nii.gz").mkdir()
    message = save_and_fail(qtbot, widget, dialogs, layer, tmp_path / "seg.nii.gz")
    assert message == "this output name is an existing folder; give a file name"
    (tmp_path / "notes").write_text("a file")
    message = save_and_fail(qtbot, widget, dialogs, layer, tmp_path / "notes" / "seg.nii.gz")
    assert message == f"{tmp_path / 'notes'} is a file, not a folder"


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
def test_killed_while_saving_leaves_no_file_and_the_next_save_cleans_up(gui, qtbot, tmp_path: Path,
                                                                        stop: signal.Signals) -> None:
    viewer, widget = gui
    out = tmp_path / "out"
    out.mkdir()
    target = out / "big.nii.gz"
    process = subprocess.Popen([*SAVE_IN_A_PROCESS, str(target)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        staged = list(out.glob(".big.nii.gz.tilewise-tmp.*/big.nii.gz"))
        if staged and staged[0].exists() and staged[0].stat().st_size > 0:
            break
        time.sleep(0.01)
    else:
        process.kill()
        pytest.fail(f"the staged file was never seen: {process.communicate()[1]}")
    process.send_signal(stop)
    process.communicate(timeout=60)
    assert process.returncode == -stop
    assert not target.exists(), "a killed Save leaves nothing under the name chosen"
    assert leftovers(out), "its staging folder stays until the next write into the folder"

    layer = add_labels(viewer)
    with qtbot.waitSignal(widget.saved, timeout=SAVE_TIMEOUT_MS) as saved:
        assert widget.save_labels(out / "seg.nii.gz", layer)
    assert saved.args == [str(out / "seg.nii.gz")]
    assert leftovers(out) == [] and not target.exists()

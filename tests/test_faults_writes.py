"""Faults injected for real into ``tilewise predict`` with the demo model: a full disk (a 4 MB tmpfs that fills
while the model runs), a read-only folder, permission denied, and kill -9 / SIGTERM while a file is written.

Each test asserts the exit code, exactly one error line on stderr (notes and warnings aside, no traceback, none of
ITK's own lines) and that no file that is not whole lies under a final name. Mounting needs root (CI runs the suite
as root); without it the full disk is ENOSPC injected at the writer's calls and the permission test a chmod'ed
folder, and the read-only mount is skipped.
"""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from fault_disks import (
    IS_ROOT,
    assert_not_written,
    assert_one_line,
    fill,
    inject_full_disk,
    leftovers,
    needs_root,
    remount_read_only,
    small_tmpfs,
)
from tilewise.engine.data import outputs
from tilewise.engine.data.slab_file import SlabLabelFile
from tilewise.engine.data.write_checks import check_image_file
from tilewise.resources import sample_path as demo_sample

# Run the command line in a fresh interpreter: what a user, a scheduler or a kill sees.
CLI = [sys.executable, "-c", "import sys; from tilewise.engine.commands.cli import main; sys.exit(main(sys.argv[1:]))"]
# The same, but the output folder's permissions are taken away while the model runs (after the pre-flight), just
# before the labels are written (whole, or opened to be written slab by slab).
CHMOD_DURING_RUN = [sys.executable, "-c", """
import os, sys
from pathlib import Path
from tilewise.engine.data import outputs
from tilewise.engine.data.slab_file import SlabLabelFile
from tilewise.engine.data.slab_file import SlabLabelFile
from tilewise.engine.commands.cli import main
folder, real, real_open = Path(sys.argv[1]), outputs.write_labels, SlabLabelFile.__init__
def chmod_then_write(*args, **kwargs):
    os.chmod(folder, 0o555)
    return real(*args, **kwargs)
def chmod_then_open(self, *args, **kwargs):
    os.chmod(folder, 0o555)
    real_open(self, *args, **kwargs)
outputs.write_labels = chmod_then_write
SlabLabelFile.__init__ = chmod_then_open
sys.exit(main(sys.argv[2:]))
"""]
# A root process without the capabilities that let root ignore permissions: denied as any user would be.
WITHOUT_ROOTS_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
TYPES = [("same", "small_t1.nii"), ("nifti", "small_t1.nii.gz"), ("mha", "small_t1.mha"), ("nrrd", "small_t1.nrrd")]


@pytest.fixture(scope="module")
def small_t1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample at half its resolution, as an uncompressed .nii (labels a 1 MB .nii)."""
    path = tmp_path_factory.mktemp("inputs") / "small_t1.nii"
    sitk.WriteImage(sitk.Shrink(sitk.ReadImage(str(demo_sample())), [2, 2, 2]), str(path))
    os.chmod(path.parent, 0o755)
    return path


def before_labels_are_written(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` just before the labels are written: before the whole-volume writer, or before a streaming
    case opens the label file it writes slab by slab as the export makes it."""
    real_write, real_open = outputs.write_labels, SlabLabelFile.__init__

    def act_then_write(*args: object, **kwargs: object) -> object:
        action()
        return real_write(*args, **kwargs)

    def act_then_open(self: SlabLabelFile, *args: Any, **kwargs: Any) -> None:
        action()
        real_open(self, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_labels", act_then_write)
    monkeypatch.setattr(SlabLabelFile, "__init__", act_then_open)


def predict(source: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "-i", str(source), "-o", str(out), "-m", "demo", "--preset", "preview", "-device", "cpu",
            *extra]


@contextmanager
def disk_fills_during_run(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A 4 MB disk (room enough for the pre-flight's estimate) that another program fills while the model runs, just
    before the labels are written; without root, ENOSPC injected at the writer's calls."""
    if not IS_ROOT:
        folder.mkdir()
        inject_full_disk(monkeypatch, folder)
        yield
        return
    def fill_once() -> None:
        if not (folder / "filler.bin").exists():
            fill(folder)

    with small_tmpfs(folder, "4m"):
        before_labels_are_written(monkeypatch, fill_once)
        yield


@pytest.mark.parametrize(("output_type", "name"), TYPES, ids=[name.split(".", 1)[1] for _, name in TYPES])
def test_disk_full_while_predicting(tmp_path: Path, small_t1: Path, monkeypatch: pytest.MonkeyPatch,
                                    run_cli, output_type: str, name: str) -> None:
    out = tmp_path / "out"
    with disk_fills_during_run(out, monkeypatch):
        code, _, err = run_cli(predict(small_t1, out, "--output-type", output_type))
        assert code == 3, err
        line = assert_one_line(err, "tilewise: error: ", f"cannot write {name}", "the disk is full")
        assert "case(s) written" not in line
        assert_not_written(out, name)
        if output_type == "same" and IS_ROOT:  # space again: the same command writes the whole file
            (out / "filler.bin").unlink()
            monkeypatch.undo()
            code, _, err = run_cli(predict(small_t1, out))
            assert code == 0, err
            check_image_file(out / name, sitk.ReadImage(str(out / name)))
            assert leftovers(out) == []


@needs_root
def test_read_only_folder(tmp_path: Path, small_t1: Path, monkeypatch: pytest.MonkeyPatch,
                          run_cli) -> None:
    out = tmp_path / "out"
    with small_tmpfs(out, "4m", read_only=True):  # read-only from the start: refused before the model loads
        started = time.perf_counter()
        code, _, err = run_cli(predict(small_t1, out))
        assert code == 3, err
        assert_one_line(err, "tilewise: error: ", "read-only")
        assert time.perf_counter() - started < 30
        assert list(out.iterdir()) == []
    with small_tmpfs(out, "4m"):  # the disk turns read-only while the model runs (ext4's errors=remount-ro)
        before_labels_are_written(monkeypatch, lambda: remount_read_only(out))
        code, _, err = run_cli(predict(small_t1, out))
        assert code == 3, err
        line = assert_one_line(err, "tilewise: error: ")
        assert line == f"tilewise: error: cannot write to {out}: the folder is read-only"
        assert_not_written(out, "small_t1.nii")


def test_permission_denied(tmp_path: Path, small_t1: Path) -> None:
    """As a user without write permission (root without its override capability; a plain chmod otherwise): a
    folder denied from the start is refused before the model loads, one denied while it runs fails at the write."""
    prefix = WITHOUT_ROOTS_OVERRIDE if IS_ROOT else []
    denied = tmp_path / "denied"
    denied.mkdir()
    if IS_ROOT:
        os.chown(denied, 65534, 65534)  # nobody's folder: not ours to write
    else:
        denied.chmod(0o555)
    result = subprocess.run([*prefix, *CLI, *predict(small_t1, denied)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 3, result.stderr
    assert_one_line(result.stderr, "tilewise: error: ")
    assert list(denied.iterdir()) == []

    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([*prefix, *CHMOD_DURING_RUN, str(out), *predict(small_t1, out)], capture_output=True,
                            text=True, timeout=300, check=False)
    out.chmod(0o755)
    assert result.returncode == 3, result.stderr
    line = assert_one_line(result.stderr, "tilewise: error: ")
    assert line == f"tilewise: error: cannot write to {out}: you do not have permission to write in this folder"
    assert_not_written(out, "small_t1.nii")


def _start_and_catch_staging(out: Path) -> subprocess.Popen:
    """Start predict with --save_probabilities (a 55 MB .npz, written for seconds) and return once its .npz is
    being written in the staging folder."""
    process = subprocess.Popen([*CLI, *predict(demo_sample(), out, "--save_probabilities")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        staged = [p for p in out.glob(".sample_t1.npz.tilewise-tmp.*/sample_t1.npz") if p.exists()]
        if staged and staged[0].stat().st_size > 0:
            return process
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"the .npz was never seen being written: {process.communicate()[1]}")


def _assert_whole_or_absent(out: Path) -> None:
    """Whatever lies under a final name is whole: the labels (written before the .npz), no .npz or .pkl."""
    assert not (out / "sample_t1.npz").exists() and not (out / "sample_t1.pkl").exists()
    labels = out / "sample_t1.nii.gz"
    if labels.exists():
        with gzip.open(labels) as handle:
            while handle.read(1 << 20):
                pass  # reads to the end: a cut stream raises


def test_kill_and_sigterm_while_writing(tmp_path: Path, small_t1: Path, run_cli) -> None:
    out = tmp_path / "out"
    killed = _start_and_catch_staging(out)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    _assert_whole_or_absent(out)
    assert leftovers(out), "kill -9 leaves its staging folder (nothing runs after it); the next run removes it"

    terminated = _start_and_catch_staging(out)
    terminated.send_signal(signal.SIGTERM)
    _, err = terminated.communicate(timeout=120)
    assert terminated.returncode in (143, -signal.SIGTERM), err
    assert "Traceback" not in err
    if terminated.returncode == 143:  # SIGTERM handled as Ctrl-C: one line, its own staging folder removed
        assert_one_line(err, "SIGTERM")
    _assert_whole_or_absent(out)

    code, _, err = run_cli(predict(small_t1, out))  # the next run into that folder
    assert code == 0, err
    assert leftovers(out) == [], "the next run removes what killed runs left"
    check_image_file(out / "small_t1.nii", sitk.ReadImage(str(out / "small_t1.nii")))

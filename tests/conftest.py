"""Shared fixtures: tiny nnU-Net models built by nnU-Net's own planner, and synthetic cases."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

# Two cores shared by tests and nnU-Net: passive OpenMP waiting avoids spin-wait stalls (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if "TILEWISE_CACHE_DIR" not in os.environ:  # converted OpenVINO models go to a throw-away folder, not ~/.cache
    import tempfile

    os.environ["TILEWISE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tilewise-test-cache-")

import pytest  # noqa: E402

try:  # before any test opens a viewer (OpenGL): see tilewise.gui._preload; the engine's tests need no viewer
    from tilewise.gui._preload import preload_native_libraries
except ImportError:
    pass
else:
    preload_native_libraries()

sys.path.insert(0, str(Path(__file__).resolve().parent))

import model_factory  # noqa: E402



@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder where models are built once per test session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def make_model(model_root: Path):
    """Build (or reuse) a model folder: ``make_model(kind, folds=(0,), seed=0)``."""

    def build(kind: str = "3d", folds: tuple[int, ...] = (0,), seed: int = 0, **kwargs) -> Path:
        return model_factory.make_model(model_root, kind, folds=folds, seed=seed, **kwargs)

    return build


@pytest.fixture(scope="session")
def ct_model(make_model) -> Path:
    """The standard single-channel 3d_fullres test model (one fold)."""
    return make_model("3d")


@pytest.fixture
def ct_case(tmp_path: Path) -> Path:
    """A CT-like volume written as NIfTI (single channel, identity direction)."""
    return model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d")


class CliRun(NamedTuple):
    """What ``tilewise ARGV`` did in-process: exit code, stdout and stderr (file-descriptor level, so what C++
    libraries such as SimpleITK write to fd 2 is included, as the user would see it)."""

    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capfd: pytest.CaptureFixture) -> Callable[[list], CliRun]:
    """``run_cli(argv)``: run ``tilewise argv`` in-process (argparse's usage errors give their exit code)."""
    from tilewise.engine.commands.cli import main

    def run(argv: list) -> CliRun:
        capfd.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capfd.readouterr()
        return CliRun(code, out, err)

    return run


@pytest.fixture
def dialogs(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The message boxes and Save dialogs the viewer shows, captured instead of blocking the test.

    ``critical``, ``warning`` and ``question`` collect (title, text); ``warning`` and ``question`` answer with
    ``answers`` in order (``question``: No when none is left); the Save dialog answers with ``paths`` in order.
    """
    from qtpy.QtWidgets import QMessageBox
    from tilewise.gui.flows import save as save_flow

    shown: dict[str, list] = {"critical": [], "warning": [], "question": [], "answers": [], "paths": []}

    def critical(parent, title, text, *args, **kwargs):
        shown["critical"].append((title, text))
        return QMessageBox.Ok

    def warning(parent, title, text, *args, **kwargs):
        shown["warning"].append((title, text))
        return shown["answers"].pop(0)

    def question(parent, title, text, *args, **kwargs):
        shown["question"].append((title, text))
        return shown["answers"].pop(0) if shown["answers"] else QMessageBox.No

    def save_path(parent, suggested, dicom_seg=False):
        return str(shown["paths"].pop(0))

    monkeypatch.setattr(QMessageBox, "critical", staticmethod(critical))
    monkeypatch.setattr(QMessageBox, "warning", staticmethod(warning))
    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    monkeypatch.setattr(save_flow, "ask_save_path", save_path)
    return shown


@pytest.fixture
def gui(make_napari_viewer, tmp_path: Path, dialogs: dict[str, list]):
    """A shown napari viewer with the Tilewise panel docked: settings in ``tmp_path``, the CPU as device, message
    boxes captured by ``dialogs``. Yields (viewer, widget); the widget is shut down afterwards."""
    from gui_fixtures import docked_widget

    viewer, widget = docked_widget(make_napari_viewer, tmp_path)
    yield viewer, widget
    widget.shutdown()

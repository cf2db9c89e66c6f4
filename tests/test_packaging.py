"""What ``pip install tilewise`` gets: the wheel's package data, entry points, and an engine that needs no GUI."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    target = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(target), str(REPO)], check=True, timeout=300)
    (built,) = target.glob("tilewise-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_the_packages_and_their_data(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    sources = [f"tilewise/{p.relative_to(REPO).as_posix()}" for package in ("engine", "gui")
               for p in (REPO / package).rglob("*.py")]
    assert len(sources) > 40
    missing = sorted(set(sources) - names)
    assert missing == [], "sub-packages missing from [tool.setuptools] packages in pyproject.toml"
    for required in (
        "tilewise/gui/napari.yaml", "tilewise/resources/presets.toml", "tilewise/resources/demo/sample_t1.nii.gz",
        "tilewise/resources/demo/sample_t1_reference_labels.nii.gz", "tilewise/resources/demo/model/plans.json",
        "tilewise/resources/demo/model/dataset.json", "tilewise/resources/demo/model/fold_4/checkpoint_final.pth",
        "tilewise/resources/demo/LICENSE-MNI-ICBM152.txt",
    ):
        assert required in names, required
    assert not any(name.startswith(("engine/", "gui/", "resources/", "tests/")) for name in names), \
        "bare top-level packages must never be installed"


def test_wheel_declares_the_command_and_the_napari_plugin(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "tilewise = tilewise.engine.commands.cli:console" in text
    assert "[napari.manifest]" in text and "tilewise = tilewise.gui:napari.yaml" in text
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert all(">=" in r for r in core), core  # every dependency has a lower bound
    assert not any("napari" in r or "PySide6" in r or "openvino" in r for r in core)  # GUI, OpenVINO are extras
    for extra in ("gui", "openvino", "onnx", "all"):
        assert any(f'extra == "{extra}"' in r for r in requires), extra


def test_engine_and_cli_work_without_the_gui_extra(tmp_path: Path) -> None:
    """Qt, napari and friends made unimportable: predict still works, bare ``tilewise`` explains how to get the viewer."""
    script = textwrap.dedent(f"""
        import sys
        class NoGui:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("napari", "qtpy", "PySide6", "PyQt5", "PyQt6", "superqt", "qtawesome",
                                          "magicgui", "vispy", "npe2"):
                    raise ImportError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, NoGui())
        from tilewise.engine.commands.cli import main
        code = main(["predict", "-m", "demo", "-i", {str(REPO / "resources/demo/sample_t1.nii.gz")!r},
                     "-o", {str(tmp_path)!r}, "--preset", "preview", "-device", "cpu", "-q"])
        assert code == 0, code
        assert main([]) == 2
        assert not any(m.split(".")[0] in ("napari", "PySide6", "qtpy") for m in sys.modules)
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "sample_t1.nii.gz").is_file()
    assert "the viewer is not installed" in completed.stderr and "pip install 'tilewise[gui]'" in completed.stderr

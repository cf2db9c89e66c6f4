"""The viewer set-up the viewer tests share: a napari viewer with the Tilewise panel docked, choosing a model and an
engine, opening an image, a viewer with no model at all, and the long run the responsiveness test and benchmark use.

Not a test module: ``conftest.py``'s ``gui`` fixture and the test modules' own fixtures build on these helpers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import model_factory
import pytest
from qtpy.QtCore import QSettings
from tilewise.gui.widget import TilewiseWidget

OPEN_TIMEOUT_MS = 60_000
LONG_RUN_TIMEOUT_MS = 300_000


def docked_widget(make_napari_viewer: Any, tmp_path: Path, model: Path | None = None,
                  backend: str | None = None) -> tuple[Any, TilewiseWidget]:
    """A shown viewer with the panel docked, its settings in ``tmp_path`` (``widget.qsettings``), on the CPU;
    ``model`` chosen and the engine ``backend`` ('torch': runs that last long enough to cancel or scroll) when
    given."""
    viewer = make_napari_viewer(show=True)
    widget = TilewiseWidget(viewer, settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    viewer.window.add_dock_widget(widget, name="Tilewise", area="right")
    panel = widget.settings_panel
    panel.device.setCurrentIndex(panel.device.findData("cpu"))
    choose(widget, model, backend)
    return viewer, widget


def choose(widget: TilewiseWidget, model: Path | None = None, backend: str | None = None) -> None:
    """Pick the engine ``backend`` ('torch', 'openvino') and then ``model`` in the panel, each when given."""
    panel = widget.settings_panel
    if backend is not None:
        panel.backend.setCurrentIndex(panel.backend.findData(backend))
    if model is not None:
        widget.model_panel.select(model)


def open_image(qtbot: Any, widget: TilewiseWidget, path: Path) -> list[Any]:
    """Open ``path`` through the panel (read on a thread) and wait for its layers."""
    with qtbot.waitSignal(widget.image_opened, timeout=OPEN_TIMEOUT_MS) as blocker:
        assert widget.open_image(path)
    return blocker.args[0]


def without_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model at all for widgets built after this: no demo model, no $nnUNet_results."""
    monkeypatch.setattr("tilewise.gui.widget.demo_model_dir", lambda: None)
    monkeypatch.delenv("nnUNet_results", raising=False)


def prepare_long_run(qtbot: Any, widget: TilewiseWidget, model: Path, tmp_path: Path) -> None:
    """``model`` chosen, a 64 x 80 x 72 CT-like case open, 'reference' (every mirror) on PyTorch: a run of several
    seconds on a CPU (OpenVINO would finish it in under 2 s)."""
    widget.model_panel.select(model)
    open_image(qtbot, widget, model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(64, 80, 72), seed=5))
    widget.settings_panel.select_preset("reference")
    widget.settings_panel.backend.setCurrentIndex(widget.settings_panel.backend.findData("torch"))


def quick_timing(monkeypatch: pytest.MonkeyPatch, seconds_per_pass: float = 0.05) -> None:
    """The estimates' first-fold timing answers at once with ``seconds_per_pass`` (tiles counted from the model's
    plans) and finds nothing to convert, instead of loading and running the model for seconds on a thread that a
    test's teardown then waits for."""
    from tilewise.engine import FirstFold
    from tilewise.gui.controllers import estimates
    from tilewise.gui.controllers.estimate_priors import plans_grid

    def first_fold(model_dir: Path, *_args: Any, **_kwargs: Any) -> FirstFold:
        return FirstFold(plans_grid(model_dir, "3d_fullres"), seconds_per_pass=seconds_per_pass, load_per_fold=0.3,
                         convert_per_fold=None)

    monkeypatch.setattr(estimates, "measure_first_fold", first_fold)
    monkeypatch.setattr(estimates, "cached_folds", lambda *_args, **_kwargs: None)

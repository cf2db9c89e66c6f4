"""``tilewise`` / ``tilewise PATH``: the viewer window, its title, the dock widget and the opened image."""
from __future__ import annotations

from pathlib import Path

import pytest

from qtpy.QtCore import QSettings, Qt

from tilewise.gui import app
from tilewise.gui.controllers.run import State
from tilewise.gui.widget import TilewiseWidget


@pytest.fixture(autouse=True)
def private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's real QSettings out of the test."""
    monkeypatch.setattr("tilewise.gui.widget.default_settings",
                        lambda: QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))


def test_viewer_opens_titled_maximised_with_widget_and_image(make_napari_viewer, qtbot, ct_model: Path,
                                                             ct_case: Path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer, widget = app.build_viewer(app.parse_args([str(ct_case), "--model", str(ct_model)]), viewer=viewer)
    # checked before the event loop runs again: only the event loop can deliver the finished read
    assert widget.run.state is State.OPENING, "the image is read on a thread: the window shows at once"
    window = viewer.window._qt_window
    assert window.windowTitle() == "Tilewise"
    assert window.windowState() & Qt.WindowMaximized
    assert isinstance(widget, TilewiseWidget)
    qtbot.waitUntil(widget.isVisible, timeout=5000)
    qtbot.waitUntil(lambda: not (widget.run.state is State.OPENING), timeout=60_000)
    assert [layer.name for layer in viewer.layers] == ["ct_0000"]
    assert widget.image_panel.channel_combos[0].currentData() == "ct_0000"
    assert widget.model_panel.current().path == ct_model.resolve()
    assert "liver" in widget.model_panel.labels.text()
    widget.shutdown()


def test_viewer_starts_empty_without_sample_or_demo(make_napari_viewer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tilewise.gui.contributions.sample_path", lambda: None)
    monkeypatch.setattr("tilewise.gui.widget.demo_model_dir", lambda: None)
    viewer, widget = app.build_viewer(app.parse_args([]), viewer=make_napari_viewer(), show=False)
    assert len(viewer.layers) == 0
    assert widget.image_panel.channel_combos[0].currentData() is None
    widget.shutdown()


def test_viewer_uses_demo_model_and_sample_when_installed(make_napari_viewer, qtbot, monkeypatch: pytest.MonkeyPatch,
                                                          ct_model: Path, ct_case: Path) -> None:
    from tilewise import resources

    monkeypatch.setattr(resources, "demo_model_dir", lambda: ct_model, raising=False)
    monkeypatch.setattr(resources, "sample_path", lambda: ct_case, raising=False)
    viewer, widget = app.build_viewer(app.parse_args([]), viewer=make_napari_viewer(), show=False)
    qtbot.waitUntil(lambda: not (widget.run.state is State.OPENING), timeout=60_000)
    assert [layer.name for layer in viewer.layers] == ["ct_0000"]
    assert widget.model_panel.current().path == ct_model
    assert "(demo)" in widget.model_panel.combo.currentText()
    widget.shutdown()


def test_models_are_found_under_nnunet_results(make_napari_viewer, monkeypatch: pytest.MonkeyPatch,
                                               ct_model: Path) -> None:
    monkeypatch.setenv("nnUNet_results", str(ct_model.parent.parent))
    monkeypatch.setattr("tilewise.gui.widget.demo_model_dir", lambda: None)
    viewer, widget = app.build_viewer(app.parse_args([]), viewer=make_napari_viewer(), show=False)
    assert widget.model_panel.current().path == ct_model
    widget.shutdown()


def test_a_model_folder_with_any_name_shows_its_configuration(qtbot, ct_model: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from tilewise.engine.model.catalog import describe_model
    from tilewise.gui.panels.model import ModelPanel

    folder = tmp_path / "my model"  # not nnU-Net's Trainer__Plans__configuration name
    shutil.copytree(ct_model, folder)
    (folder / "fold_0" / "debug.json").write_text(json.dumps({"configuration_name": "3d_fullres"}))
    assert describe_model(folder).configuration == "?"
    panel = ModelPanel(QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat), demo_model=folder)
    qtbot.addWidget(panel)
    assert panel.configuration.text() == "3d_fullres"
    assert panel.combo.currentText() == "TilewiseCT · 3d_fullres (demo)"

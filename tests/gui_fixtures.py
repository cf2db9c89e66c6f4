"""The viewer set-up the viewer tests share: a napari viewer with the Tilewise panel docked, and opening an image."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QSettings
from tilewise.gui.widget import TilewiseWidget

OPEN_TIMEOUT_MS = 60_000


def docked_widget(make_napari_viewer: Any, tmp_path: Path, model: Path | None = None,
                  backend: str | None = None) -> tuple[Any, TilewiseWidget]:
    """A shown viewer with the panel docked, its settings in ``tmp_path``, on the CPU; ``model`` chosen and the
    engine ``backend`` ('torch': runs that last long enough to cancel or scroll) when given."""
    viewer = make_napari_viewer(show=True)
    widget = TilewiseWidget(viewer, settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    viewer.window.add_dock_widget(widget, name="Tilewise", area="right")
    panel = widget.settings_panel
    panel.device.setCurrentIndex(panel.device.findData("cpu"))
    if backend is not None:
        panel.backend.setCurrentIndex(panel.backend.findData(backend))
    if model is not None:
        widget.model_panel.select(model)
    return viewer, widget


def open_image(qtbot: Any, widget: TilewiseWidget, path: Path) -> list[Any]:
    """Open ``path`` through the panel (read on a thread) and wait for its layers."""
    with qtbot.waitSignal(widget.image_opened, timeout=OPEN_TIMEOUT_MS) as blocker:
        assert widget.open_image(path)
    return blocker.args[0]

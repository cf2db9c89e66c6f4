"""Screenshot of the three-plane layout while a run fills in the tiles, for the README.

``xvfb-run -s "-screen 0 1366x768x24" sh -c "openbox & python tests/make_three_plane_screenshots.py --suffix
_1366x768"`` opens the viewer as ``tilewise`` does (three planes, demo model, sample, maximised: openbox gives the
window the screen's size), runs the ``balanced`` preset and saves ``three_planes_running<suffix>.png`` once about
half of the tiles have arrived: axial in napari's canvas, coronal and sagittal beside it, the crosshair through the
point on screen, the tiles filling in all three. Without a window manager, ``--size WIDTHxHEIGHT`` sizes the window.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_API", "pyside6")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tilewise.gui._preload import preload_native_libraries

preload_native_libraries()  # before napari creates an OpenGL context

import napari
from qtpy.QtCore import QSettings, QTimer
from qtpy.QtWidgets import QApplication
from tilewise.gui import app as viewer_app
from tilewise.gui import widget as dock

ESTIMATES_WAIT_MS = 60_000  # at most this long for the first fold to be timed before Run


def run_once_estimated(widget: dock.TilewiseWidget, preset: str) -> None:
    """When the image has opened: choose ``preset``, wait for the first fold's timing (the estimates refined, at
    most :data:`ESTIMATES_WAIT_MS`), then press Run."""
    waited: list[int] = []

    def when_estimated() -> None:
        waited.append(200)
        if widget.estimates.timer is None or sum(waited) >= ESTIMATES_WAIT_MS:
            QTimer.singleShot(500, widget.start_run)
        else:
            QTimer.singleShot(200, when_estimated)

    def on_opened(_layers: list) -> None:
        widget.settings_panel.select_preset(preset)
        QTimer.singleShot(200, when_estimated)

    widget.image_opened.connect(on_opened)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "resources" / "screenshots")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--size", help="window size WIDTHxHEIGHT instead of maximised (no window manager)")
    parser.add_argument("--suffix", default="", help="added to the file name, e.g. _1366x768")
    parser.add_argument("--fraction", type=float, default=0.5, help="save when this share of the tiles has arrived")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings_file = Path(tempfile.mkdtemp(prefix="tilewise-screenshot-")) / "settings.ini"
    dock.default_settings = lambda: QSettings(str(settings_file), QSettings.IniFormat)  # not the user's settings

    viewer = napari.Viewer(title=viewer_app.TITLE, show=False)
    viewer, widget = viewer_app.build_viewer(viewer_app.parse_args([]), viewer=viewer, show=args.size is None)
    window = viewer.window._qt_window
    if args.size:
        window.resize(*(int(v) for v in args.size.lower().split("x")))
        window.show()
    application = QApplication.instance()
    requested: list[bool] = []
    saved: list[Path] = []

    def save() -> None:
        application.processEvents()
        path = args.out / f"three_planes_running{args.suffix}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        saved.append(path)
        print(f"wrote {path} ({window.width()} x {window.height()})", flush=True)

    def on_tile(event: object) -> None:
        done, total = getattr(event, "done", 0), getattr(event, "total", 2)
        if not requested and done >= max(1, round(total * args.fraction)):
            requested.append(True)
            QTimer.singleShot(0, save)  # once the layers have taken this tile

    def on_finished(outcome: str) -> None:
        if outcome != "done" or not saved:
            print(f"the run ended ({outcome}) before the screenshot", file=sys.stderr)
            application.exit(1)
            return
        application.exit(0)

    run_once_estimated(widget, args.preset)
    widget.run_started.connect(lambda worker: worker.tile.connect(on_tile))
    widget.run_finished.connect(on_finished)
    code = application.exec_()
    widget.shutdown()
    shutil.rmtree(settings_file.parent, ignore_errors=True)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())

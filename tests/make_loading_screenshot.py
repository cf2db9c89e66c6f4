"""A screenshot of the loading stage of a first run, with a fold converting for OpenVINO, and how long it takes to
see it: ``xvfb-run -s "-screen 0 1366x768x24" python tests/make_loading_screenshot.py``.

Opens the viewer with the demo model and sample, an empty OpenVINO cache (``TILEWISE_CACHE_DIR`` in a temporary
folder), waits for the estimates (their timing converts the first fold, as on a first use), runs ``balanced`` and
saves the window while the second fold converts (``viewer_loading.png``). It prints the seconds from Run to the first
"fold k of n", the first conversion line and the first tile; then it runs again with the cache warm (the model
loaded afresh) and prints the same.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_API", "pyside6")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["TILEWISE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tilewise-cache-")  # a first use: nothing cached

from tilewise.gui._preload import preload_native_libraries

preload_native_libraries()

import napari
from qtpy.QtCore import QSettings, QTimer
from qtpy.QtWidgets import QApplication
from tilewise.gui.app import TITLE
from tilewise.gui.widget import TilewiseWidget
from tilewise.resources import sample_path

ESTIMATES_WAIT_MS = 120_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "resources" / "screenshots")
    parser.add_argument("--size", default="1366x768", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings_file = Path(tempfile.mkdtemp()) / "settings.ini"
    viewer = napari.Viewer(title=TITLE, show=False)
    widget = TilewiseWidget(viewer, settings=QSettings(str(settings_file), QSettings.IniFormat))
    viewer.window.add_dock_widget(widget, name=TITLE, area="right")
    window = viewer.window._qt_window
    window.resize(*(int(v) for v in args.size.lower().split("x")))
    window.show()
    app = QApplication.instance()
    runs: list[dict[str, float]] = []

    def mark(name: str) -> None:
        run = runs[-1]
        run.setdefault(name, time.perf_counter() - run["run"])

    def on_load(event: object) -> None:
        mark("fold")
        if event.step == "converting":
            mark("converting")
            if event.fold == 2 and len(runs) == 1:
                QTimer.singleShot(1500, lambda: save("viewer_loading"))

    def save(name: str) -> None:
        app.processEvents()
        path = args.out / f"{name}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        print(f"wrote {path} ({window.width()} x {window.height()})", flush=True)

    def start() -> None:
        runs.append({"run": time.perf_counter(), "load": os.getloadavg()[0]})
        widget.start_run()

    def on_finished(outcome: str) -> None:
        if outcome != "done":
            print(f"the run ended: {outcome}", file=sys.stderr)
            app.exit(1)
            return
        if len(runs) == 1:
            widget.run.clear_cache()  # the next run loads the model again, from OpenVINO's cache
            QTimer.singleShot(500, start)
            return
        for name, run in zip(("cold cache", "warm cache"), runs):
            times = ", ".join(f"{key} {run[key]:.1f} s" for key in ("fold", "converting", "tile") if key in run)
            print(f"{name}: from Run to {times} (load average {run['load']:.2f})", flush=True)
        app.exit(0)

    waited: list[int] = []

    def when_estimated() -> None:
        waited.append(200)
        if widget.estimates.timer is None or sum(waited) >= ESTIMATES_WAIT_MS:
            QTimer.singleShot(500, start)
        else:
            QTimer.singleShot(200, when_estimated)

    def on_opened(_layers: list) -> None:
        widget.settings_panel.select_preset("balanced")
        QTimer.singleShot(200, when_estimated)

    def on_started(worker: object) -> None:
        worker.loading.connect(on_load)
        worker.tile.connect(lambda _event: mark("tile"))

    widget.image_opened.connect(on_opened)
    widget.run_started.connect(on_started)
    widget.run_finished.connect(on_finished)
    widget.open_image(sample_path())
    code = app.exec_()
    widget.shutdown()
    return int(code)


if __name__ == "__main__":
    sys.exit(main())

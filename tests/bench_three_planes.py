"""What the three planes cost while a run fills in the tiles: GUI-thread time of one preview redraw, one canvas
against three.

Not a test: a script that prints numbers. It opens the sample volume in a viewer with the Tilewise dock (napari's one
canvas, then the three planes), makes a live preview as a run does, and times ``flush()`` of one tile (a 64^3 box
around the point on screen, as the engine's tiles come) followed by the event loop until everything is redrawn (the
mirrors' refresh and the paint of every canvas), alternating the two layouts::

    xvfb-run -s "-screen 0 1366x768x24" python tests/bench_three_planes.py [--tiles 40]

The last line is JSON (milliseconds: median and 90th percentile per redraw).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_API", "pyside6")

from tilewise.gui._preload import preload_native_libraries

preload_native_libraries()  # before napari creates an OpenGL context

import napari
import numpy as np
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QApplication
from tilewise.gui import widget as dock
from tilewise.gui.contributions import read_layers, sample_path
from tilewise.gui.geometry import geometry_from_layer
from tilewise.gui.layers import LivePreview
from tilewise.gui.widget import TilewiseWidget

TILE = 64


def redraw_times(three_planes: bool, tiles: int, settings: Path) -> list[float]:
    """Milliseconds of GUI-thread work per tile, from the preview's write to the last canvas painted."""
    viewer = napari.Viewer(show=False)
    widget = TilewiseWidget(viewer, settings=QSettings(str(settings), QSettings.IniFormat))
    viewer.window.add_dock_widget(widget, area="right")
    viewer.window._qt_window.resize(1366, 740)
    viewer.window._qt_window.show()
    widget.planes.set_shown(three_planes)
    [(data, kwargs, _)] = read_layers(sample_path())
    image = viewer.add_image(data, **kwargs)
    preview = LivePreview.for_image(viewer, image, geometry_from_layer(image), {1: "a"}, [], None, 0.6)
    application = QApplication.instance()
    for _ in range(20):
        application.processEvents()
    centre = np.round(image.world_to_data(viewer.dims.point)).astype(int)
    rng = np.random.default_rng(0)
    times = []
    for index in range(tiles):
        start = np.clip(centre - TILE // 2 + rng.integers(-TILE // 2, TILE // 2, 3), 0, np.array(data.shape) - TILE)
        box = tuple(slice(int(s), int(s) + TILE) for s in start)
        began = time.perf_counter()
        preview.add(box, np.full((TILE,) * 3, 1 + index % 2, dtype=np.uint8))
        preview.flush()
        for _ in range(3):  # the mirrors refresh on the next pass of the event loop, then every canvas paints
            application.processEvents()
        times.append((time.perf_counter() - began) * 1000)
    widget.shutdown()
    viewer.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=40, help="tiles per layout and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one canvas then three")
    args = parser.parse_args(argv)
    if sample_path() is None:
        print("the sample volume is not installed", file=sys.stderr)
        return 2
    settings = Path(os.environ.get("TMPDIR", "/tmp")) / "tilewise-bench-three-planes.ini"
    dock.demo_model_dir = lambda: None  # no model: no estimate timing on a thread beside the measurement
    os.environ.pop("nnUNet_results", None)
    measured: dict[str, list[float]] = {"one canvas": [], "three planes": []}
    for _ in range(args.rounds):
        for name, shown in (("one canvas", False), ("three planes", True)):
            measured[name] += redraw_times(shown, args.tiles, settings)[1:]  # the first redraw builds the textures
    settings.unlink(missing_ok=True)
    summary = {name: {"median_ms": round(statistics.median(values), 2),
                      "p90_ms": round(float(np.percentile(values, 90)), 2), "redraws": len(values)}
               for name, values in measured.items()}
    for name, values in summary.items():
        print(f"{name}: {values['median_ms']} ms per tile redraw (90th percentile {values['p90_ms']} ms)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

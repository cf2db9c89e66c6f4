"""Screenshots of the review for the README, in the viewer as ``tilewise`` opens it (three planes, maximised).

``xvfb-run -s "-screen 0 1366x768x24" sh -c "openbox & python tests/make_review_screenshots.py --uncertainty --suffix
_1366x768"`` runs the demo model on the sample (``--preset``, default ``balanced``), ticks "Show where the model is
unsure", clicks one of the regions to check (``--region``, default the first: the largest blob), zooms the main view in (``--zoom``) and saves
``viewer_uncertainty<suffix>.png``: the heat overlay in all three views at that region, the unsure volume and the
list in Review.

``--warning`` shows the suitability warning instead, as ``tests/make_screenshots.py --warning`` does, but in the
viewer as ``tilewise`` opens it and on a CT that looks like one (a body with organs, from ``model_factory``, under
a long file name) for the demo brain MR model: ``viewer_warning<suffix>.png`` before the run,
``viewer_warning_done<suffix>.png`` with its result (``preview``), whose Review keeps the warning.

openbox gives the window the screen's size (``tilewise`` shows it maximised); without a window manager, ``--size
WIDTHxHEIGHT`` sizes it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_API", "pyside6")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tilewise.gui._preload import preload_native_libraries

preload_native_libraries()  # before napari creates an OpenGL context

import napari
from qtpy.QtCore import QSettings, QTimer
from qtpy.QtWidgets import QApplication
from tilewise.gui import app as viewer_app
from tilewise.gui import contributions
from tilewise.gui import widget as dock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_factory
from make_three_plane_screenshots import run_once_estimated

SETTLE_MS = 1500  # after the jump: the three views redraw the overlay at the region


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "resources" / "screenshots")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--uncertainty", action="store_true", help="the uncertainty overlay and the regions to check")
    mode.add_argument("--warning", action="store_true", help="the suitability warning on a CT")
    parser.add_argument("--preset", default="balanced", help="with --uncertainty: the preset of the run")
    parser.add_argument("--region", type=int, default=1, help="with --uncertainty: the region to click (1: largest)")
    parser.add_argument("--zoom", type=float, default=2.0, help="with --uncertainty: zoom the main view in")
    parser.add_argument("--size", help="window size WIDTHxHEIGHT instead of maximised (no window manager)")
    parser.add_argument("--suffix", default="", help="added to each file name, e.g. _1366x768")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings_file = Path(tempfile.mkdtemp(prefix="tilewise-screenshot-")) / "settings.ini"
    dock.default_settings = lambda: QSettings(str(settings_file), QSettings.IniFormat)  # not the user's settings
    if args.warning:
        contributions.sample_path = lambda: None  # the viewer opens the CT only, not the sample first

    viewer = napari.Viewer(title=viewer_app.TITLE, show=False)
    viewer, widget = viewer_app.build_viewer(viewer_app.parse_args([]), viewer=viewer, show=args.size is None)
    window = viewer.window._qt_window
    if args.size:
        window.resize(*(int(v) for v in args.size.lower().split("x")))
        window.show()
    application = QApplication.instance()

    def save(name: str) -> None:
        application.processEvents()
        path = args.out / f"{name}{args.suffix}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        print(f"wrote {path} ({window.width()} x {window.height()})", flush=True)

    if args.warning:
        show_warning(widget, save, application, settings_file.parent)
    else:
        show_uncertainty(widget, save, application, args.preset, args.region, args.zoom)
    code = application.exec_()
    widget.shutdown()
    shutil.rmtree(settings_file.parent, ignore_errors=True)
    return int(code)


def show_uncertainty(widget: dock.TilewiseWidget, save: Callable[[str], None], application: QApplication, preset: str,
                     region: int, zoom: float) -> None:
    """Run ``preset`` on the sample (opened by the viewer), then show the overlay, go to region ``region`` and zoom
    the main view in ``zoom`` times."""
    from tilewise.gui.panels.common import StepColumn

    def on_finished(outcome: str) -> None:
        if outcome != "done":
            print(f"the run ended: {outcome} ({widget.last_error})", file=sys.stderr)
            application.exit(1)
            return
        QTimer.singleShot(800, show)

    def show() -> None:
        panel = widget.regions
        if not panel.isVisible() or panel.list.count() < region:
            print(f"no region {region} to show ({panel.list.count()} listed)", file=sys.stderr)
            application.exit(1)
            return
        panel.overlay_box.click()
        panel.list.setFocus()  # as after a click: the row shows as chosen
        panel.list.setCurrentRow(region - 1)
        panel.list.itemClicked.emit(panel.list.item(region - 1))  # what a click on the row sends
        column = widget.findChild(StepColumn)
        column.bring_into_view(panel)
        camera = widget.viewer.scene.camera
        camera.zoom = camera.zoom * zoom  # as the person looks closer: the unsure voxels are a few pixels wide
        QTimer.singleShot(SETTLE_MS, lambda: (save("viewer_uncertainty"), application.exit(0)))

    run_once_estimated(widget, preset)
    widget.run_finished.connect(on_finished)


def show_warning(widget: dock.TilewiseWidget, save: Callable[[str], None], application: QApplication,
                 folder: Path) -> None:
    """Open a CT with a long file name (written to ``folder``) for the demo brain MR model; save the warning, then the
    result of a ``preview`` run."""
    name = "patient_0001_CT_abdomen_portal_venous_phase_3mm_soft_tissue_kernel_B30f_series_0004.nii.gz"
    case = model_factory.make_case(folder / name, "3d", shape=(64, 160, 192), spacing=(1.5, 1.5, 3.0), seed=3)
    widget.settings_panel.select_preset("preview")

    def warned(sentences: list) -> None:
        if sentences:
            QTimer.singleShot(500, lambda: (save("viewer_warning"), widget.start_run()))

    def finished(outcome: str) -> None:
        if outcome != "done":
            print(f"the run ended: {outcome} ({widget.last_error})", file=sys.stderr)
            application.exit(1)
            return
        QTimer.singleShot(800, lambda: (save("viewer_warning_done"), application.exit(0)))

    widget.fit.found.connect(warned)
    widget.run_finished.connect(finished)
    widget.open_image(case)


if __name__ == "__main__":
    sys.exit(main())

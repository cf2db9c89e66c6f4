"""Screenshots of the viewer for the README: ``xvfb-run -s "-screen 0 1600x1000x24" python tests/make_screenshots.py``.

Opens the viewer as ``tilewise`` does (demo model, sample), waits for the preset estimates, runs the ``balanced``
preset, and saves the window idle (``viewer_idle.png``), mid-run (``viewer_running.png``: tiles filling in,
progress), after the run (``viewer_done.png``: the review step with label volumes and Save) and the result in the
coronal view (``viewer_orientation_coronal.png``: the View buttons and the orientation letters). Needs a display: an
X server or Xvfb.

``--warning`` shows the suitability warning instead: a CT with a long file name for the demo brain MR model, with
Advanced settings open (``viewer_warning.png``), then its result after a ``preview`` run, which keeps the warning
in Review (``viewer_warning_done.png``).

``--totalseg WEIGHTS`` shows TotalSegmentator's ``total`` task with its fast (3 mm) model chosen in the model list
(``viewer_totalseg_model.png``, TotalSegmentator's weights in WEIGHTS, e.g. the stand-ins of
``tests/totalseg_factory.py``) on ``--image`` (a CT), then its result with TotalSegmentator's statistics (volume,
mean HU) in the review table (``viewer_totalseg_review.png``).

``--size 1366x768 --suffix _1366x768`` makes the window that size instead (the smallest screen the dock is laid out
for; with a window manager running, ``--maximized`` fills the screen as ``tilewise`` does, title bar included).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_API", "pyside6")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tilewise.gui._preload import preload_native_libraries  # noqa: E402

preload_native_libraries()

import napari  # noqa: E402
from qtpy.QtCore import QPoint, QSettings, QTimer  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from tilewise.gui.app import TITLE  # noqa: E402
from tilewise.gui.widget import TilewiseWidget  # noqa: E402
from tilewise.resources import sample_path  # noqa: E402

ESTIMATES_WAIT_MS = 60_000  # at most this long for the first fold to be timed (the estimates refined)


def _size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "resources" / "screenshots")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--size", type=_size, default=(1600, 1000), help="window size, WIDTHxHEIGHT")
    parser.add_argument("--maximized", action="store_true", help="maximise the window instead (needs a window manager)")
    parser.add_argument("--suffix", default="", help="added to each file name, e.g. _1366x768")
    parser.add_argument("--warning", action="store_true", help="the suitability warning on a CT instead")
    parser.add_argument("--totalseg", type=Path, help="TotalSegmentator's weights folder: its total task instead")
    parser.add_argument("--image", type=Path, help="with --totalseg: the CT to segment")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.totalseg is not None:
        os.environ["TOTALSEG_WEIGHTS_PATH"] = str(args.totalseg.resolve())  # before the model list is made

    viewer = napari.Viewer(title=TITLE, show=False)
    settings = QSettings(str(args.out / ".screenshot-settings.ini"), QSettings.IniFormat)
    widget = TilewiseWidget(viewer, settings=settings)
    viewer.window.add_dock_widget(widget, name=TITLE, area="right")
    window = viewer.window._qt_window
    if args.maximized:
        window.showMaximized()
    else:
        window.resize(*args.size)
        window.show()
    app = QApplication.instance()
    shots: list[Path] = []

    def save(name: str) -> None:
        app.processEvents()
        path = args.out / f"{name}{args.suffix}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        shots.append(path)
        print(f"wrote {path} ({window.width()} x {window.height()})", flush=True)

    def on_tile(event: object) -> None:
        if getattr(event, "done", 0) == max(getattr(event, "total", 2) // 2, 1) and len(shots) == 1:
            QTimer.singleShot(150, lambda: save("viewer_running"))

    def on_finished(outcome: str) -> None:
        if outcome != "done":
            print(f"the run ended: {outcome}", file=sys.stderr)
            app.exit(1)
            return
        QTimer.singleShot(500, coronal)

    def coronal() -> None:
        save("viewer_done")
        widget.image_panel.view_buttons.buttons["coronal"].click()
        QTimer.singleShot(500, lambda: (save("viewer_orientation_coronal"), app.exit(0)))

    def start() -> None:
        save("viewer_idle")
        widget.start_run()

    waited: list[int] = []

    def when_estimated() -> None:
        """Start once the first fold has been timed (the estimates refined), or after ESTIMATES_WAIT_MS at most."""
        waited.append(200)
        if widget.estimates.timer is None or sum(waited) >= ESTIMATES_WAIT_MS:
            QTimer.singleShot(500, start)
        else:
            QTimer.singleShot(200, when_estimated)

    def on_opened(layers: list) -> None:
        widget.settings_panel.select_preset(args.preset)
        QTimer.singleShot(200, when_estimated)

    if args.warning:
        show_warning(widget, save, app)
    elif args.totalseg is not None:
        show_task(widget, save, app, args.image)
    else:
        widget.image_opened.connect(on_opened)
        widget.run_started.connect(lambda worker: worker.tile.connect(on_tile))
        widget.run_finished.connect(on_finished)
        widget.open_image(sample_path())
    code = app.exec_()
    widget.shutdown()
    (args.out / ".screenshot-settings.ini").unlink(missing_ok=True)
    return int(code)


def show_warning(widget: TilewiseWidget, save: Callable[[str], None], app: QApplication) -> None:
    """Open a CT with a long file name for the demo brain MR model; save the warning, then the result of a run."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from image_factory import ct_like

    folder = Path(tempfile.mkdtemp(prefix="tilewise-screenshot-"))
    case = ct_like(folder / "patient_0001_CT_abdomen_portal_venous_phase_3mm_soft_tissue_kernel_B30f_series_0004.nii.gz")
    widget.settings_panel.advanced.expand(animate=False)
    widget.settings_panel.select_preset("preview")

    def warned(sentences: list) -> None:
        if sentences:
            QTimer.singleShot(500, lambda: (save("viewer_warning"), widget.start_run()))

    widget.fit.found.connect(warned)
    widget.run_finished.connect(lambda outcome: QTimer.singleShot(800, lambda: (save("viewer_warning_done"),
                                                                                app.exit(0))))
    widget.open_image(case)


def show_task(widget: TilewiseWidget, save: Callable[[str], None], app: QApplication, image: Path) -> None:
    """TotalSegmentator's total task with its fast model on ``image``: the model step, then the review's statistics."""
    from tilewise.gui.panels.common import Step, StepColumn

    widget.model_panel.select_task("totalseg:total", fast=True)
    steps = {step.section: step for step in widget.findChildren(Step)}

    def opened(layers: list) -> None:
        steps[widget.model_panel].set_open(True)  # the model step, open: the task chosen, its fast model ticked
        steps[widget.image_panel].set_open(False)
        QTimer.singleShot(800, lambda: (save("viewer_totalseg_model"), widget.start_run()))

    def review() -> None:
        column = widget.findChild(StepColumn)  # the table's top (its header) at the top of the dock
        column.verticalScrollBar().setValue(widget.review.table.mapTo(column.widget(), QPoint(0, 0)).y() - 40)
        QTimer.singleShot(300, lambda: (save("viewer_totalseg_review"), app.exit(0)))

    def finished(outcome: str) -> None:
        if outcome != "done":
            print(f"the run ended: {outcome} ({widget.last_error})", file=sys.stderr)
            app.exit(1)
            return
        QTimer.singleShot(800, review)

    widget.image_opened.connect(opened)
    widget.run_finished.connect(finished)
    widget.open_image(image)


if __name__ == "__main__":
    sys.exit(main())

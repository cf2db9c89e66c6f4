"""Overhead of the progressive display: the same prediction headless and through the viewer's widget.

Not a test: a script that prints numbers. It runs one case several times with ``Predictor.predict`` (headless, no
provisional labels) and several times through the Tilewise dock widget in a napari viewer driven by the Qt event
loop (click Run, wait for the end: worker thread, provisional labels per tile, preview redraws, progress, the result
layer and its volumes), alternating the two so that a busy machine slows both alike, and reports the medians::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python tests/bench_gui_overhead.py [--repeats 3] [--preset fast]

It uses ``--model DIR --image FILE`` when given, else the demo model and sample volume when they are installed
(``tilewise.resources``), else a test model from ``tests/model_factory.py`` and a synthetic CT-like case
(``--shape``). Without ``$DISPLAY`` it starts a private Xvfb display, as pytest-xvfb does. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("QT_API", "pyside6")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind (after one warm-up each)")
    parser.add_argument("--preset", default="fast", help="speed preset (default: fast, the viewer's default)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128), metavar=("Z", "Y", "X"),
                        help="size of the synthetic case when the demo is not installed")
    parser.add_argument("--factory", action="store_true", help="use the test model even if the demo is installed")
    parser.add_argument("--model", type=Path, help="a trained model folder (with --image), e.g. the benchmark model "
                                                   "of tests/make_bench_model.py")
    parser.add_argument("--image", type=Path, help="the image to segment with --model")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tilewise_bench_gui",
                        help="folder for the test model and case (reused between runs)")
    return parser.parse_args(argv)


def model_and_case(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """(model folder, image file, description): the demo when installed, else the test factory's."""
    from tilewise.gui.contributions import demo_model_dir, sample_path

    if args.model is not None and args.image is not None:
        return args.model, args.image, f"{args.model.name} + {args.image.name}"
    model, sample = demo_model_dir(), sample_path()
    if not args.factory and model is not None and sample is not None and any(model.glob("fold_*/checkpoint_*.pth")):
        return model, sample, "demo model + sample volume"
    import model_factory

    args.work.mkdir(parents=True, exist_ok=True)
    model = model_factory.make_model(args.work / "models", "3d")
    shape = tuple(int(s) for s in args.shape)
    case = args.work / f"case_{shape[0]}x{shape[1]}x{shape[2]}_0000.nii.gz"
    if not case.exists():
        model_factory.make_case(case, "3d", shape=shape, seed=5)
    return model, case, f"test model (tests/model_factory.py, 3d) + synthetic CT {shape}"


class GuiRunner:
    """A shown napari viewer with the Tilewise widget, driven through its Run button."""

    def __init__(self, model: Path, case: Path, preset: str) -> None:
        import napari
        from qtpy.QtCore import QEventLoop, QSettings

        from tilewise.gui.widget import TilewiseWidget

        self._loop_type = QEventLoop
        self.viewer = napari.Viewer(title="Tilewise bench", show=True)
        settings = QSettings(str(Path(tempfile.mkdtemp()) / "settings.ini"), QSettings.IniFormat)
        self.widget = TilewiseWidget(self.viewer, settings=settings)
        self.viewer.window.add_dock_widget(self.widget, name="Tilewise", area="right")
        self.widget.settings_panel.device.setCurrentIndex(self.widget.settings_panel.device.findData("cpu"))
        self.widget.model_panel.select(model)
        self._wait(self.widget.image_opened, lambda: self.widget.open_image(case))
        self.widget.settings_panel.select_preset(preset)

    def _wait(self, signal, start) -> list:
        loop = self._loop_type()
        received: list = []

        def done(*values) -> None:
            received.extend(values)
            loop.quit()

        signal.connect(done)
        start()
        if not received:
            loop.exec()
        signal.disconnect(done)
        return received

    def run_once(self) -> tuple[float, float]:
        """Seconds from the click on Run to the end of the run (result layer shown, volumes listed), and the CPU
        seconds the GUI thread used meanwhile (on a machine with a free core they do not slow the run)."""
        for layer in [layer for layer in self.viewer.layers if layer is self.widget.result_layer]:
            self.viewer.layers.remove(layer)  # keep memory flat; not timed
        started, cpu_started = time.perf_counter(), time.thread_time()
        outcome = self._wait(self.widget.run_finished, self.widget.run_panel.run_button.click)
        elapsed, gui_cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        if outcome != ["done"]:
            raise RuntimeError(f"the viewer's run ended with {outcome}: {self.widget.last_error}")
        return elapsed, gui_cpu

    def close(self) -> None:
        self.widget.shutdown()
        self.viewer.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000), color_depth=24)
        display.start()
    try:
        from tilewise.gui._preload import preload_native_libraries

        preload_native_libraries()
        from tilewise.engine import Predictor, get_preset, read_volume

        model, case, description = model_and_case(args)
        print(f"case: {description}\n  model {model}\n  image {case}\npreset: {args.preset}, device: cpu, "
              f"torch threads: {__import__('torch').get_num_threads()}", flush=True)
        predictor = Predictor(model, get_preset(args.preset), device="cpu")
        volume = read_volume(case)
        gui = GuiRunner(model, case, args.preset)

        def headless() -> float:
            started = time.perf_counter()
            predictor.predict(volume)
            return time.perf_counter() - started

        headless()  # warm-up: first-call costs of both paths are not what this measures
        gui.run_once()
        headless_s: list[float] = []
        gui_s: list[float] = []
        gui_cpu_s: list[float] = []
        for repeat in range(args.repeats):
            headless_s.append(headless())
            elapsed, gui_cpu = gui.run_once()
            gui_s.append(elapsed)
            gui_cpu_s.append(gui_cpu)
            print(f"  run {repeat + 1}: headless {headless_s[-1]:.2f} s, viewer {gui_s[-1]:.2f} s "
                  f"(GUI thread CPU {gui_cpu:.2f} s)", flush=True)
        tiles = gui.widget.run_panel.progress.maximum()
        gui.close()
    finally:
        if display is not None:
            display.stop()
    headless_median, gui_median = statistics.median(headless_s), statistics.median(gui_s)
    overhead = gui_median / headless_median - 1
    print(f"headless (Predictor.predict): median {headless_median:.2f} s over {args.repeats} runs")
    print(f"viewer (progressive display): median {gui_median:.2f} s over {args.repeats} runs, {tiles} tiles; "
          f"GUI thread CPU median {statistics.median(gui_cpu_s):.2f} s")
    print(f"overhead of the progressive display: {overhead * 100:+.1f} %")
    print(json.dumps({"case": description, "preset": args.preset, "repeats": args.repeats, "tiles": tiles,
                      "headless_s": headless_s, "viewer_s": gui_s, "gui_thread_cpu_s": gui_cpu_s,
                      "headless_median_s": headless_median, "viewer_median_s": gui_median, "overhead": overhead}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

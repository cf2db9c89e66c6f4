"""Entry script of the frozen Tilewise app (installer/tilewise.spec builds two executables from it).

- ``Tilewise`` (``Tilewise.exe``, windowed on Windows: no console window): what the Start menu, the desktop shortcut
  and "Open with Tilewise" start. Bare, it opens the viewer; with a path, it opens that volume.
- ``tilewise-cli`` (``tilewise-cli.exe``, a console program): the ``tilewise`` command, e.g.
  ``tilewise-cli predict -m demo -i scan.nii.gz -o out/`` or ``tilewise-cli --self-test``.

Both run :func:`tilewise.engine.commands.cli.main`. One more flag lives here, for the installer's CI:
``--smoke-test-viewer [REPORT.json]`` opens the viewer as a user would, checks that the frozen app found everything
napari needs at run time, and quits (exit status 0 if every check passed). With a report path, it also saves a
screenshot of the whole window next to it (REPORT.png).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time

SMOKE_TEST_FLAG = "--smoke-test-viewer"
SMOKE_TEST_TIMEOUT_S = 180.0
EXPECTED_PLUGINS = ("tilewise", "napari", "napari-svg")
"""npe2 manifests the viewer must find: found only through bundled entry-point metadata (``napari.manifest``)."""


def _ensure_streams() -> None:
    """A windowed (no console) executable on Windows starts with ``sys.stdout``/``sys.stderr`` set to None."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the app


def smoke_test_viewer(argv: list[str]) -> int:
    """Open the viewer, wait until the dock, the plugins, the sample and a rendered frame are there, then quit."""
    report_path = argv[0] if argv else None
    screenshot_path = os.path.splitext(report_path)[0] + ".png" if report_path else None
    os.environ.setdefault("QT_API", "pyside6")
    from tilewise.gui import app
    from tilewise.gui._preload import preload_native_libraries

    preload_native_libraries()
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    started = time.perf_counter()
    report: dict[str, object] = {"checks": {}, "errors": []}
    checks: dict[str, object] = report["checks"]  # type: ignore[assignment]
    viewer, _widget = app.build_viewer(app.parse_args([]))
    checks["viewer_s"] = round(time.perf_counter() - started, 2)

    def plugins() -> None:
        from npe2 import PluginManager

        manager = PluginManager.instance()
        names = {manifest.name for manifest in manager.iter_manifests()}
        checks["plugins"] = sorted(names)
        missing = [name for name in EXPECTED_PLUGINS if name not in names]
        if missing:
            report["errors"].append(f"npe2 did not find the plugins {missing} (entry-point metadata not bundled?)")  # type: ignore[union-attr]
        docks = list(getattr(viewer.window, "dock_widgets", {}).keys())
        checks["docks"] = docks
        if app.TITLE not in docks:
            report["errors"].append(f"no '{app.TITLE}' dock widget (found {docks})")  # type: ignore[union-attr]

    def finish() -> None:
        try:
            plugins()
            from tilewise.resources import sample_path

            # the napari reader contribution, through npe2, as File > Open with the Tilewise plugin does
            layers = viewer.open(str(sample_path()), plugin="tilewise")
            checks["reader_layers"] = [layer.name for layer in layers]
            shot = viewer.screenshot(canvas_only=True, flash=False)  # renders with vispy: shaders are bundled
            checks["screenshot"] = list(shot.shape)
            if shot.ndim != 3 or int(shot[..., :3].max()) == 0:
                report["errors"].append("the rendered frame is empty")  # type: ignore[union-attr]
            if screenshot_path:
                # the whole window (canvas, layer list, the Tilewise dock): CI keeps it as an artefact
                viewer.screenshot(path=screenshot_path, canvas_only=False, flash=False)
                checks["window_screenshot"] = screenshot_path
        except Exception as error:  # noqa: BLE001 - reported, the status says it failed
            report["errors"].append(f"{type(error).__name__}: {error}")  # type: ignore[union-attr]
        checks["total_s"] = round(time.perf_counter() - started, 2)
        viewer.close()
        QApplication.instance().quit()

    def poll() -> None:
        # the sample opens on a reading thread; its image layer appears when it has been read
        if len(viewer.layers) > 0:
            checks["sample_layers"] = [layer.name for layer in viewer.layers]
            checks["sample_s"] = round(time.perf_counter() - started, 2)
            finish()
        elif time.perf_counter() - started > SMOKE_TEST_TIMEOUT_S:
            report["errors"].append(f"the sample did not open within {SMOKE_TEST_TIMEOUT_S:.0f} s")  # type: ignore[union-attr]
            finish()
        else:
            QTimer.singleShot(200, poll)

    QTimer.singleShot(200, poll)
    napari.run()
    text = json.dumps(report, indent=1)
    print(text)
    if report_path:
        with open(report_path, "w", encoding="utf-8") as handle:
            handle.write(text)
    ok = not report["errors"]
    print("viewer smoke test passed" if ok else "viewer smoke test FAILED", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without interpreter teardown: this test checks what the bundle contains, and background threads the
    # viewer started for the sample (e.g. its time estimates) may still be running; destroying them at exit aborts.
    os._exit(0 if ok else 1)


def main() -> int:
    multiprocessing.freeze_support()
    _ensure_streams()
    if sys.argv[1:2] == [SMOKE_TEST_FLAG]:
        return smoke_test_viewer(sys.argv[2:])
    from tilewise.engine.commands.cli import main as tilewise_main

    return tilewise_main()


if __name__ == "__main__":
    sys.exit(main())

"""The Speed box shows an estimated time for each preset on the open image, and learns from finished runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import model_factory
from tilewise.engine.backends.select import openvino_available
from tilewise.engine.estimate import Span
from tilewise.gui.controllers.estimates import EXACT_TEXT, EstimateBook
from tilewise.gui.controllers.worker import predictor_key
from tilewise.gui.panels.speed import describe_seconds, describe_span
from tilewise.gui.widget import TilewiseWidget

TIMEOUT_MS = 300_000
"""How long a run may take before a test gives up: a wait, not a timing claim (a run that converts for OpenVINO
took over 120 s twice here with the 2 cores shared at load average about 8)."""


def _item_texts(widget: TilewiseWidget) -> dict[str, str]:
    combo = widget.settings_panel.preset
    return {combo.itemData(i): combo.itemText(i) for i in range(combo.count())}


def _estimated(qtbot, widget: TilewiseWidget, model: Path, tmp_path: Path):
    """Choose ``model``, open a small case and wait for its estimates; returns the Speed box's estimate label."""
    widget.model_panel.select(model)
    case = model_factory.make_case(tmp_path / "case_0000.nii.gz", "3d", shape=(48, 64, 72))
    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(case)
    label = widget.settings_panel.estimate
    assert "On this computer, now" in label.text(), "a range from priors at once"
    qtbot.waitUntil(lambda: widget.estimates.timer is None, timeout=TIMEOUT_MS)  # then refined by the timing
    return label


def test_presets_show_estimates_for_the_open_image(gui, qtbot, ct_model: Path, tmp_path: Path) -> None:
    _viewer, widget = gui
    settings = widget.qsettings  # what EstimateBook reads and writes
    label = _estimated(qtbot, widget, ct_model, tmp_path)
    texts = _item_texts(widget)
    assert all(re.search(r"\(about \d+(-\d+)? (s|min)", text) for text in texts.values()), texts
    assert widget.estimates.chosen is not None and widget.estimates.chosen.is_range  # preparing, writing: priors
    shown = widget.estimates.shown
    assert shown["reference"].seconds > shown["balanced"].seconds > shown["preview"].seconds
    assert shown["reference"].passes_per_tile == 8 and shown["preview"].passes_per_tile == 1
    assert shown["reference"].tiles > shown["preview"].tiles
    book = EstimateBook(settings)
    for precision in ("fp32", "reduced"):
        assert (book.seconds_per_pass(ct_model, "cpu-auto", precision) or 0) > 0
    widget.settings_panel.select_preset("preview")
    assert re.search(r"\d+ tiles x 1 pass", label.toolTip()), "the stages are in the tooltip"

    # a bigger image: more tiles, longer estimate
    before = widget.estimates.shown["reference"]
    big = model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(96, 128, 144))
    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(big)
    widget.select_image("big_0000")
    after = widget.estimates.shown["reference"]
    assert after.tiles > before.tiles and after.seconds > before.seconds

    # a finished run replaces the measured time per pass with what the run really took
    book.settings.setValue(book._key(ct_model, "cpu-auto", "reduced"), 1000.0)
    widget.settings_panel.select_preset("preview")
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.run_panel.run_button.click()
    assert 0 < (book.seconds_per_pass(ct_model, "cpu-auto", "reduced") or 0) < 1000.0
    assert "about" in _item_texts(widget)["preview"]
    assert not widget.estimates.shown["preview"].is_range  # every stage measured now: one figure
    assert "The model is loaded already" in label.toolTip()  # the viewer kept the model it just ran


def test_after_a_cancelled_load_the_estimate_includes_loading_again(gui, qtbot, ct_model: Path,
                                                                    tmp_path: Path) -> None:
    """The estimate leaves out the load exactly when the runs' predictor cache holds the model: a run cancelled
    while loading another preset's model drops the one loaded before, so its estimate loads again."""
    _viewer, widget = gui
    label = _estimated(qtbot, widget, ct_model, tmp_path)
    widget.settings_panel.select_preset("preview")
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    assert blocker.args == ["done"]
    assert "The model is loaded already" in label.toolTip()
    assert widget.estimates.shown["preview"].stages["load"].high == 0

    widget.settings_panel.select_preset("reference")  # another key: the cache lets the preview's model go
    assert widget.estimates.shown["reference"].stages["load"].high > 0
    widget.run_started.connect(lambda worker: worker.cancel())  # cancelled before the load has begun
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    assert blocker.args == ["cancelled"]
    choice, model = widget.settings_panel.choice(), widget.model_panel.current().path
    held = widget.run.cache.holds(predictor_key(model, choice.preset, choice.device, choice.folds, False, False))
    assert (widget.estimates.shown["reference"].stages["load"].high == 0) == held

    widget.settings_panel.select_preset("preview")
    assert widget.estimates.shown["preview"].stages["load"].high > 0, "the preview's model is no longer loaded"
    assert "Loading:" in label.toolTip() and "loaded already" not in label.toolTip()


def test_nnunet_exact_says_why_it_has_no_estimate(gui, qtbot, ct_model: Path, tmp_path: Path) -> None:
    _viewer, widget = gui
    label = _estimated(qtbot, widget, ct_model, tmp_path)
    widget.settings_panel.nnunet_exact.setChecked(True)
    assert label.text() == EXACT_TEXT and label.isVisibleTo(widget)
    assert widget.estimates.chosen is None and widget.estimates.shown, "the presets keep their estimates"
    widget.settings_panel.nnunet_exact.setChecked(False)
    assert "On this computer, now" in label.text()


def test_no_estimate_without_an_image(gui, ct_model: Path) -> None:
    viewer, widget = gui
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    widget.model_panel.select(ct_model)
    assert widget.settings_panel.estimate.text() == ""
    assert not any("(about" in text for text in _item_texts(widget).values())


@pytest.mark.parametrize("seconds,text", [(0.4, "about 1 s"), (7.2, "about 7 s"), (47, "about 45 s"),
                                          (200, "about 3 min"), (4000, "about 1 h 7 min")])
def test_describe_seconds(seconds: float, text: str) -> None:
    assert describe_seconds(seconds) == text


@pytest.mark.parametrize("low,high,text", [(8, 8, "about 8 s"), (5.2, 14.6, "about 5-15 s"),
                                           (62, 150, "about 1-2 min"), (20, 240, "about 20 s to 4 min")])
def test_describe_span(low: float, high: float, text: str) -> None:
    assert describe_span(Span(low, high)) == text


@pytest.mark.skipif(not openvino_available(), reason="needs the openvino extra")
def test_pending_conversions_are_named_per_fold_and_precision(gui, qtbot, make_model, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing converts fold 0; the presets with all three folds still convert two, per precision, until run."""
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    _viewer, widget = gui
    model = make_model("3d", folds=(0, 1, 2))
    label = _estimated(qtbot, widget, model, tmp_path)
    shown = widget.estimates.shown
    assert (shown["reference"].conversions, shown["balanced"].conversions, shown["fast"].conversions) == (2, 2, 0)
    widget.settings_panel.select_preset("balanced")
    assert "First run converts 2 folds for OpenVINO" in label.text()
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.run_panel.run_button.click()
    shown = widget.estimates.shown
    assert shown["balanced"].conversions == 0  # converted (reduced precision) by the run
    assert shown["reference"].conversions == 2  # full precision: still to convert
    assert "First run converts" not in label.text()
    assert widget.estimates.cached[(str(model), "cpu-auto")]["reduced"] == frozenset({"0", "1", "2"})


def test_closing_the_window_while_timing_exits_cleanly(tmp_path: Path) -> None:
    """The timing thread starts with the viewer; closing at once must not abort ('QThread destroyed')."""
    import os
    import subprocess
    import sys

    script = (
        "from tilewise.gui._preload import preload_native_libraries; preload_native_libraries()\n"
        "from qtpy.QtCore import QTimer; from qtpy.QtWidgets import QApplication; import napari\n"
        "from tilewise.gui import app\n"
        "v, w = app.build_viewer(app.parse_args([]))\n"
        "def go():\n"
        "    if not len(v.layers) or w.estimates.timer is None: QTimer.singleShot(20, go); return\n"
        "    print('closing while timing', flush=True); v.close(); QApplication.instance().quit()\n"
        "QTimer.singleShot(20, go); napari.run()\n"
    )
    env = {**os.environ, "QT_API": "pyside6", "XDG_CONFIG_HOME": str(tmp_path)}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "closing while timing" in completed.stdout
    assert "Destroyed while thread" not in completed.stderr

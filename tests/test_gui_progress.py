"""Progress in napari's activity panel (done/total, closed at the end and on cancel) and the busy finishing step."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar
from napari.utils.progress import progress
from qtpy.QtGui import QMovie

import model_factory
from tilewise.engine.postprocess import export as engine_export
from tilewise.gui._compat import busy_indicator
from tilewise.gui.panels import activity
from tilewise.gui.panels.run import FINISHING_TEXT
from gui_fixtures import choose, open_image

RUN_TIMEOUT_MS = 180_000


@pytest.fixture
def torch_run(gui, qtbot, tmp_path: Path, ct_model: Path):
    """The conftest viewer with the CT test model on PyTorch (runs of seconds) and a CT-like case open."""
    choose(gui[1], ct_model, backend="torch")
    open_image(qtbot, gui[1], model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(64, 80, 72), seed=5))
    return gui


def _activity_bars(viewer) -> list[QtLabeledProgressBar]:
    """The bars napari's activity panel shows now (it keeps closed ones until they are deleted: skip those)."""
    dialog = viewer.window._qt_window._activity_dialog
    return [bar for bar in dialog.findChildren(QtLabeledProgressBar)
            if bar.progress is not None and bar.progress in progress._all_instances]


def test_activity_panel_counts_tiles_and_closes_at_the_end(torch_run, qtbot, monkeypatch: pytest.MonkeyPatch) -> None:
    viewer, widget = torch_run
    monkeypatch.setattr(activity, "COUNT_INTERVAL_S", 0.0)  # a run of a second: show every count, not every 0.5 s
    widget.settings_panel.select_preset("balanced")
    seen: list[tuple[str, int, int]] = []
    activities: list = []

    indicators: list[tuple[bool, bool]] = []

    def look(event) -> None:  # GUI thread, after the widget has handled the tile
        activities.append(widget.run_panel.activity)
        for bar in _activity_bars(viewer):
            seen.append((bar.description_label.text(), bar.qt_progress_bar.value(), bar.qt_progress_bar.maximum()))
            if widget.run_panel.activity is not None and widget.run_panel.activity.bar is not None:  # not while napari builds the bar
                indicator = busy_indicator(viewer)
                indicators.append((not indicator.isHidden(), indicator.movie().state() == QMovie.Running))

    widget.run_started.connect(lambda worker: worker.tile.connect(look))
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    assert blocker.args == ["done"]
    counted = [(value, maximum) for text, value, maximum in seen
               if text.startswith("Tilewise: segmenting big_0000") and maximum > 0]
    assert counted, "the activity panel showed the run with a tile count"
    total = counted[-1][1]
    assert all(maximum == total and 0 <= value <= total for value, maximum in counted)
    assert len({value for value, _ in counted}) > 1, "and it moved"
    assert indicators and all(shown and not animated for shown, animated in indicators), \
        "napari's 'in progress' indicator is shown, still (its animation redraws the whole window)"
    assert activities[0].closed and activities[0].bar is None and widget.run_panel.activity is None
    assert _activity_bars(viewer) == [], "closed at the end"


def test_finishing_step_shows_a_busy_bar_with_what_it_does(torch_run, qtbot, monkeypatch: pytest.MonkeyPatch) -> None:
    viewer, widget = torch_run
    widget.settings_panel.select_preset("preview")
    real_export = engine_export.export_logits

    def slow_export(*args, **kwargs):  # a large many-label case: putting labels back on the input grid takes a while
        time.sleep(1.5)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(engine_export, "export_logits", slow_export)
    at_last_tile: list[tuple[str, int, int]] = []
    finishing_bars: list[tuple[str, int]] = []

    def on_tile(event) -> None:
        if event.done == event.total:
            at_last_tile.append((widget.run_panel.status.text(), widget.run_panel.progress.minimum(), widget.run_panel.progress.maximum()))

    def activity_busy() -> bool:
        bars = [(bar.description_label.text(), bar.qt_progress_bar.maximum()) for bar in _activity_bars(viewer)]
        finishing_bars.extend(bars)
        return ("Tilewise: writing labels on the input grid: ", 0) in bars

    widget.run_started.connect(lambda worker: worker.tile.connect(on_tile))
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
        qtbot.waitUntil(lambda: bool(at_last_tile), timeout=RUN_TIMEOUT_MS)
        assert widget.running, "the engine is still writing the labels"
        qtbot.waitUntil(activity_busy, timeout=5_000)
    assert blocker.args == ["done"]
    assert at_last_tile == [(FINISHING_TEXT, 0, 0)], "the text says what happens; the bar is busy, not stuck"
    assert FINISHING_TEXT == "Finishing: writing labels on the input grid…"
    assert widget.run_panel.progress.maximum() > 0 and widget.run_panel.progress.value() == widget.run_panel.progress.maximum()
    assert widget.run_panel.status.text().startswith("Done in")


def test_cancel_from_the_activity_panel_stops_the_run_and_closes_the_bar(torch_run, qtbot) -> None:
    viewer, widget = torch_run
    widget.settings_panel.select_preset("reference")
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
        qtbot.waitUntil(lambda: any(bar.qt_progress_bar.value() >= 1 for bar in _activity_bars(viewer)),
                        timeout=RUN_TIMEOUT_MS)
        [bar] = _activity_bars(viewer)
        assert not bar.cancel_button.isHidden(), "napari shows a Cancel button beside the bar"
        bar.cancel_button.click()
    assert blocker.args == ["cancelled"]
    assert _activity_bars(viewer) == [] and widget.run_panel.activity is None
    assert not [layer for layer in viewer.layers if layer.name.endswith("(in progress)")]

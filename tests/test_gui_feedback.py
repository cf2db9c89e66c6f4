"""Feedback and reuse: Run shows Cancel and what it does before any slow step; a preset change reuses the prepared
image; the tile count reads the same in the dock's text, its bar and napari's activity bar; the time left only
counts down."""
from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest

from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar
from napari.utils.progress import progress

import model_factory
from tilewise.engine import TileEvent
from tilewise.gui.controllers.run import State
from tilewise.gui.panels.run import LOADING_TEXT, RemainingTime, RunPanel, format_duration
from tilewise.gui.widget import TilewiseWidget
from gui_fixtures import choose, open_image

RUN_TIMEOUT_MS = 180_000
BOX = (slice(0, 8), slice(0, 8), slice(0, 8))


def _event(done: int, total: int, elapsed_s: float = 1.0, eta_s: float = 1.0) -> TileEvent:
    return TileEvent(done=done, total=total, tile_index=done - 1, network_box=BOX, input_box=None, labels=None,
                     elapsed_s=elapsed_s, eta_s=eta_s)


@pytest.fixture
def torch_run(gui, qtbot, tmp_path: Path, ct_model: Path):
    """The conftest viewer with the CT test model on PyTorch and a CT-like case open."""
    choose(gui[1], ct_model, backend="torch")
    open_image(qtbot, gui[1], model_factory.make_case(tmp_path / "first_0000.nii.gz", "3d", seed=3))
    return gui


def _run(qtbot, widget: TilewiseWidget, preset: str) -> None:
    widget.settings_panel.select_preset(preset)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    assert blocker.args == ["done"]


def test_run_shows_cancel_and_loading_before_napari_builds_the_preview_layer(torch_run, qtbot, monkeypatch) -> None:
    """The click sets Cancel and the loading line, and asks Qt to paint the button at once, before napari starts
    building the preview layer, the slow part of the click. Whether that paint reaches the screen is up to the window
    system (under a bare X server it may not), so the test reads what the widgets say and what was asked of Qt."""
    viewer, widget = torch_run
    repaint_requests: list[str] = []  # the Run button's text each time the panel asked for an immediate paint
    qt_repaint = widget.run_panel.run_button.repaint

    def logged_repaint(*args) -> None:
        repaint_requests.append(widget.run_panel.run_button.text())
        qt_repaint(*args)

    monkeypatch.setattr(widget.run_panel.run_button, "repaint", logged_repaint)
    before_layer: list[tuple[str, str, list[str]]] = []
    viewer.layers.events.inserting.connect(lambda event: before_layer.append((widget.run_panel.run_button.text(),
                                                                              widget.run_panel.status.text(),
                                                                              list(repaint_requests))))
    _run(qtbot, widget, "preview")
    [(button, status, requested_before)] = before_layer[:1]
    assert button == "Cancel (Esc)", "the button said Cancel before the slow layer creation"
    assert status == LOADING_TEXT, "and the status line said what happens"
    assert "Cancel (Esc)" in requested_before, "and the button was painted at once saying so, not after the layer work"


def test_a_preset_change_reuses_the_prepared_image_another_image_does_not(torch_run, qtbot, tmp_path: Path) -> None:
    _, widget = torch_run
    prepared = widget.run.cache.prepared
    _run(qtbot, widget, "fast")
    _run(qtbot, widget, "preview")
    assert (prepared.hits, prepared.misses) == (1, 1), "the second run took the first run's prepared image"

    with qtbot.waitSignal(widget.image_opened, timeout=60_000):
        widget.open_image(model_factory.make_case(tmp_path / "second_0000.nii.gz", "3d", seed=4))
    widget.select_image("second_0000")
    _run(qtbot, widget, "preview")
    assert (prepared.hits, prepared.misses) == (1, 2), "another image is prepared afresh"


def _activity_counts(viewer) -> list[tuple[int, int]]:
    dialog = viewer.window._qt_window._activity_dialog
    return [(bar.qt_progress_bar.value(), bar.qt_progress_bar.maximum()) for bar in
            dialog.findChildren(QtLabeledProgressBar) if bar.progress is not None
            and bar.progress in progress._all_instances]


def test_the_dock_text_its_bar_and_napari_s_bar_show_the_same_count(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer(show=True)
    panel = RunPanel(viewer)
    viewer.window.add_dock_widget(panel, name="run", area="right")
    assert panel.progress.text() == "", "no tile count before a run"
    panel.show_state(State.LOADING)
    panel.start_activity("Tilewise: segmenting test", on_cancel=lambda: None)
    seen: list[tuple[int, int, str, list[tuple[int, int]]]] = []

    def look() -> None:  # after each progress update (connected after the panel's own slot)
        seen.append((panel.progress.value(), panel.progress.maximum(), panel.status.text(), _activity_counts(viewer)))

    panel._progress_timer.timeout.connect(look)
    total = 40
    for done in range(1, total):
        panel.show_tile(_event(done, total))
        qtbot.wait(40)
    qtbot.waitUntil(lambda: panel.progress.value() == total - 1, timeout=10_000)
    counted = [entry for entry in seen if entry[3] and entry[1] == total]
    assert len({value for value, *_ in counted}) > 2, "the count moved"
    for value, maximum, text, activity in counted:
        assert panel.progress.format() == "%v of %m tiles"
        assert text.startswith(f"Segmenting: {value} of {maximum} tiles done"), (value, text)
        assert activity == [(value, maximum)], "napari's bar shows the dock's count"
    panel.show_stopped("cancelled")
    assert panel.progress.text() == "", "no count after a run that left nothing"
    panel.shutdown()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_time_left_only_counts_down(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer(show=True)
    clock = _Clock()
    panel = RunPanel(viewer, clock=clock)
    panel.show_state(State.LOADING)  # no activity bar: the dock shows each tile's count
    total, started = 10, 3.0  # the model loads for 3 s, the first tile warms the backend up
    arrivals = [5.0, 5.5, 6.0, 9.0, 9.3, 9.6, 13.0, 13.2, 13.4]  # two slow tiles among fast ones
    lefts: list[int] = []
    engine_etas: list[float] = []
    for done, at in enumerate(arrivals, start=1):
        clock.now = at
        elapsed = at - started
        engine_etas.append(elapsed / done * (total - done))  # the engine's estimate rises after each slow tile
        panel.show_tile(_event(done, total, elapsed, engine_etas[-1]))
        qtbot.waitUntil(lambda done=done: panel.progress.value() == done, timeout=5_000)
        match = re.fullmatch(r"Elapsed (\d+:\d\d) · about (\d+):(\d\d) left", panel.timing.text())
        assert match, panel.timing.text()
        assert match.group(1) == format_duration(at)
        lefts.append(int(match.group(2)) * 60 + int(match.group(3)))
    assert any(later > earlier for earlier, later in pairwise(engine_etas)), "the raw estimate rose"
    assert all(later <= earlier for earlier, later in pairwise(lefts)), lefts
    assert lefts[0] > lefts[-1] and lefts[-1] <= 2, lefts
    panel.shutdown()


def test_a_new_stage_starts_its_estimate_afresh() -> None:
    remaining = RemainingTime()
    assert remaining.update(1, 10, now=1.0, engine_eta_s=9.0) == 9.0
    assert remaining.update(5, 10, now=2.0, engine_eta_s=1.0) == pytest.approx(1.25)
    assert remaining.update(6, 10, now=10.0, engine_eta_s=9.0) == pytest.approx(1.25), "never up within a stage"
    assert remaining.update(1, 20, now=11.0, engine_eta_s=30.0) == 30.0, "another total: a new stage"
    assert remaining.update(3, 20, now=12.0, engine_eta_s=30.0) == pytest.approx(8.5)

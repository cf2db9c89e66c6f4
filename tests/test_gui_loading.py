"""The Segment step while the model loads: "fold k of n" for each fold in order, and, for a fold that OpenVINO
converts on first use, a line that says why with its own bar and a time left; none with the cache warm; Cancel
stops between folds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import model_factory
import pytest
from gui_fixtures import choose, open_image, quick_timing
from tilewise.engine.backends.select import openvino_available

RUN_TIMEOUT_MS = 300_000

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")


@pytest.fixture
def three_folds(gui, qtbot, make_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A three-fold model on OpenVINO with an empty cache, Balanced (every fold), a small case open; the estimates'
    own first-fold timing is stubbed (it would convert a fold on its own thread meanwhile)."""
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    quick_timing(monkeypatch)
    viewer, widget = gui
    choose(widget, make_model("3d", folds=(0, 1, 2)), backend="openvino")
    widget.settings_panel.select_preset("balanced")
    open_image(qtbot, widget, model_factory.make_case(tmp_path / "small_0000.nii.gz", "3d", shape=(24, 40, 40), seed=3))
    return viewer, widget


class Watch:
    """What the Segment step shows after each load event the panel has handled, and whether a tile came first."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget
        self.shown: list[dict[str, Any]] = []
        self.events: list[Any] = []
        self.tiles = 0
        self.cancel_on: tuple[int, str] | None = None
        widget.run_started.connect(self._connect)

    def _connect(self, worker: Any) -> None:  # after the run controller's connections: the panel has the event
        worker.loading.connect(self._look)
        worker.tile.connect(self._tile)

    def _look(self, event: Any) -> None:
        panel = self.widget.run_panel
        conversion = panel.conversion
        self.events.append(event)
        self.shown.append({
            "status": panel.status.text(), "bar": panel.progress.format(), "tiles": self.tiles,
            "converting": conversion.isVisibleTo(panel), "reason": conversion.reason.text(),
            "left": conversion.clock.total_s(), "conversion_bar": conversion.bar.format()})
        if self.cancel_on == (event.fold, event.step):
            panel.run_button.click()

    def _tile(self, _event: Any) -> None:
        self.tiles += 1


def _run(qtbot, widget) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    return blocker.args[0]


def _folds_shown(shown: list[dict[str, Any]]) -> list[str]:
    """The 'Fold k of n' texts on the bar, each once in a row."""
    texts: list[str] = []
    for view in shown:
        if not texts or texts[-1] != view["bar"]:
            texts.append(view["bar"])
    return texts


def test_a_first_run_shows_each_fold_and_the_conversion_with_time_left(three_folds, qtbot) -> None:
    _, widget = three_folds
    watch = Watch(widget)
    assert _run(qtbot, widget) == "done"
    folds = [f"Fold {k} of 3" for k in (1, 2, 3)]
    assert _folds_shown(watch.shown) == folds + folds  # each fold read, then each made ready for this CPU
    assert [view["status"] for view in watch.shown[:3]] == [f"Loading the model: fold {k} of 3…" for k in (1, 2, 3)]
    assert all(view["tiles"] == 0 for view in watch.shown), "loading is over before the first tile"
    converting = [view for view, event in zip(watch.shown, watch.events) if event.step == "converting"]
    assert len(converting) == 3
    for k, view in enumerate(converting, start=1):
        assert view["converting"] and view["left"] > 0
        assert view["reason"].startswith("First use of this model at this precision: converting it for this CPU, "
                                         "about ")
        assert view["conversion_bar"].startswith(f"Converting fold {k} of 3: ")
        assert view["status"] == f"Loading the model: fold {k} of 3, getting it ready for this CPU…"
    assert not widget.run_panel.conversion.isVisibleTo(widget.run_panel), "hidden once the model has loaded"


def test_a_warm_cache_shows_no_conversion(three_folds, qtbot) -> None:
    _, widget = three_folds
    assert _run(qtbot, widget) == "done"  # converts and caches every fold
    widget.run.clear_cache()  # the next run loads the model again, from OpenVINO's cache
    watch = Watch(widget)
    assert _run(qtbot, widget) == "done"
    assert [event.step for event in watch.events if event.step != "loading"] == ["preparing", "cached"] * 3
    assert not any(view["converting"] for view in watch.shown)
    assert _folds_shown(watch.shown) == [f"Fold {k} of 3" for k in (1, 2, 3)] * 2


def test_cancel_while_a_fold_converts_stops_before_the_next_fold(three_folds, qtbot) -> None:
    _, widget = three_folds
    watch = Watch(widget)
    watch.cancel_on = (1, "converting")
    assert _run(qtbot, widget) == "cancelled"
    steps = [(event.fold, event.step) for event in watch.events]
    assert (1, "converting") in steps and not any(fold > 1 for fold, step in steps if step != "loading")
    assert watch.tiles == 0
    assert not widget.run_panel.conversion.isVisibleTo(widget.run_panel)

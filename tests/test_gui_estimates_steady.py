"""Estimates that do not jump: a range from priors as soon as the model and the image are known, refined in place
without moving any control; the presets in order (preview <= fast <= balanced <= reference); wider while the
computer is busier than its cores."""
from __future__ import annotations

import itertools
import threading
from pathlib import Path

import model_factory
import pytest
from gui_fixtures import open_image
from qtpy.QtCore import QPoint
from qtpy.QtWidgets import QAbstractButton, QComboBox, QSlider
from tilewise.engine import FirstFold, Span
from tilewise.gui.controllers import estimates as estimates_module
from tilewise.gui.controllers.estimate_priors import PRESET_ORDER, in_preset_order, plans_grid, widened

TIMEOUT_MS = 120_000


def control_places(widget) -> dict[str, tuple[int, int, int, int]]:
    """Where every visible button, list and slider of the dock lies (x, y, width, height in the dock)."""
    places = {}
    for kind in (QAbstractButton, QComboBox, QSlider):
        for index, control in enumerate(widget.findChildren(kind)):
            if control.isVisibleTo(widget):
                corner = control.mapTo(widget, QPoint(0, 0))
                places[f"{kind.__name__}{index}:{control.objectName() or control.text() if hasattr(control, 'text') else ''}"] = (
                    corner.x(), corner.y(), control.width(), control.height())
    return places


def settled_places(qtbot, widget) -> dict[str, tuple[int, int, int, int]]:
    """:func:`control_places` once the dock has been laid out (a layout request travels up the steps one event at a
    time): the same twice, 100 ms apart."""
    places = control_places(widget)
    for _ in range(50):
        qtbot.wait(100)
        places, previous = control_places(widget), places
        if places == previous:
            return places
    raise AssertionError("the dock kept moving")


def assert_in_order(totals: dict[str, Span]) -> None:
    for cheaper, costlier in itertools.pairwise(PRESET_ORDER):
        assert totals[cheaper].low <= totals[costlier].low and totals[cheaper].high <= totals[costlier].high, totals


def test_an_estimate_shows_at_once_is_refined_in_place_and_keeps_the_presets_in_order(
        gui, qtbot, ct_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _viewer, widget = gui
    estimates = widget.estimates
    estimates.machine_load = lambda: (0.5, 2)
    release = threading.Event()
    grid = plans_grid(ct_model, "3d_fullres")

    def slow_timing(*_args, **_kwargs) -> FirstFold:  # a large model: its first fold takes as long as the test wants
        assert release.wait(60)
        return FirstFold(grid, seconds_per_pass=0.05, load_per_fold=0.3, convert_per_fold=None)

    monkeypatch.setattr(estimates_module, "measure_first_fold", slow_timing)
    monkeypatch.setattr(estimates_module, "cached_folds", lambda *_args, **_kwargs: None)  # converts nothing
    widget.model_panel.select(ct_model)
    open_image(qtbot, widget, model_factory.make_case(tmp_path / "case_0000.nii.gz", "3d", shape=(48, 64, 72)))
    label = widget.settings_panel.estimate
    prior_text = label.text()
    assert estimates.timer is not None, "still timing the first fold"
    assert "On this computer, now" in prior_text and "A range until a run is timed here" in label.toolTip()
    assert set(estimates.view.totals) == set(PRESET_ORDER) and not any(s.measured for s in estimates.view.totals.values())
    assert all("(about" in widget.settings_panel.preset.itemText(i) for i in range(4))
    before = settled_places(qtbot, widget)

    release.set()
    qtbot.waitUntil(lambda: estimates.timer is None, timeout=TIMEOUT_MS)
    assert label.text() != prior_text, "refined by the timing"
    assert settled_places(qtbot, widget) == before, "no control moved"
    assert_in_order(estimates.view.totals)

    # a cheaper preset that must load its model, a costlier one whose model is loaded: still shown in order
    book = estimates.book
    book.settings.setValue(book._key(ct_model, "cpu-auto", "load/reduced"), 100.0)
    monkeypatch.setattr(widget.run.cache, "holds", lambda key: key[1].name == "balanced")
    widget.settings_panel.select_preset("balanced")
    raw = estimates.shown
    assert raw["balanced"].total.high < raw["fast"].total.low, "the stages alone would put balanced first"
    assert_in_order(estimates.view.totals)
    assert estimates.view.totals["balanced"] == estimates.view.totals["fast"]
    assert estimates.view.chosen_total == estimates.view.totals["balanced"], "the text says what the list says"

    # busy: more work waiting than cores widens the upper end by as much
    calm = estimates.view.totals
    estimates.machine_load = lambda: (6.0, 2)
    widget.settings_panel.select_preset("fast")
    for name, span in estimates.view.totals.items():
        assert span.low == pytest.approx(calm[name].low) and span.high == pytest.approx(3 * calm[name].high)
    assert "On this computer, now (busy):" in label.text() and "load 6.0 on 2 cores" in label.toolTip()


def test_preset_order_and_widening() -> None:
    totals = {"reference": Span(5, 9), "balanced": Span(2, 3), "fast": Span(4, 4), "preview": Span(1, 6)}
    ordered = in_preset_order(totals)
    assert ordered == {"reference": Span(5, 9), "balanced": Span(4, 6), "fast": Span(4, 6), "preview": Span(1, 6)}
    assert widened(Span(2, 4), (1.9, 2)) == Span(2, 4) and widened(Span(2, 4), (5.0, 2)) == Span(2, 10)

"""The window stays responsive because the code keeps engine work off the GUI thread and bounds what one tile costs
it; how long it actually stalls on a given machine is a benchmark (``tests/bench_gui_responsive.py``)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tilewise.engine import predictor as predictor_module
from tilewise.engine.postprocess import export as export_module
from tilewise.engine.preprocess import pipeline
from gui_fixtures import LONG_RUN_TIMEOUT_MS as RUN_TIMEOUT_MS, prepare_long_run


@pytest.fixture
def long_run(gui, qtbot, tmp_path: Path, ct_model: Path):
    """The viewer, model and case of ``tests/bench_gui_responsive.py``: a run of several seconds on PyTorch."""
    prepare_long_run(qtbot, gui[1], ct_model, tmp_path)
    return gui


def test_engine_work_never_runs_on_the_gui_thread(long_run, qtbot, monkeypatch: pytest.MonkeyPatch) -> None:
    viewer, widget = long_run
    gui_thread = threading.current_thread()
    threads: dict[str, set[str]] = {}

    def recorded(name, function):
        def call(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread().name)
            assert threading.current_thread() is not gui_thread, f"{name} ran on the GUI thread"
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(predictor_module.Predictor, "__init__", recorded("load", predictor_module.Predictor.__init__))
    monkeypatch.setattr(predictor_module, "preprocess", recorded("preprocess", predictor_module.preprocess))
    monkeypatch.setattr(export_module, "export_logits", recorded("export", export_module.export_logits))
    monkeypatch.setattr(pipeline, "preprocess", recorded("preprocess", pipeline.preprocess))
    widget.settings_panel.select_preset("preview")
    tiles: list = []
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.run_started.connect(lambda worker: worker.tile.connect(tiles.append))
    started = time.perf_counter()
    widget.run_panel.run_button.click()
    preview = widget.run.preview
    qtbot.waitUntil(lambda: bool(outcomes), timeout=RUN_TIMEOUT_MS)
    elapsed = time.perf_counter() - started

    assert outcomes == ["done"]
    assert set(threads) == {"load", "preprocess", "export"}
    assert gui_thread.name not in set().union(*threads.values())
    # per tile the GUI thread only queues a region; redraws are coalesced to about ten a second
    assert len(tiles) > 1 and preview.updates <= elapsed / 0.1 + 1

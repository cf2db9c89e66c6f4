"""Loading reports each fold in order (:class:`~tilewise.engine.LoadEvent`): its checkpoint, then for OpenVINO its
conversion on first use or its cached copy."""
from __future__ import annotations

from pathlib import Path

import pytest
from tilewise.engine import LoadEvent, Predictor, get_preset
from tilewise.engine.backends.select import openvino_available


def _load(model: Path, backend: str) -> list[LoadEvent]:
    events: list[LoadEvent] = []
    Predictor(model, get_preset("fast").with_overrides(backend=backend), device="cpu", folds=["0", "1"],
              on_load=events.append)
    return events


def _steps(events: list[LoadEvent]) -> list[tuple[int, int, str]]:
    return [(event.fold, event.folds, event.step) for event in events]


def test_torch_reports_each_fold_s_checkpoint_in_order(make_model) -> None:
    events = _load(make_model("3d", folds=(0, 1)), "torch")
    assert _steps(events) == [(1, 2, "loading"), (2, 2, "loading")]
    assert events[0].seconds_so_far <= events[1].seconds_so_far


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
def test_openvino_reports_conversions_then_the_cache(make_model, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))  # empty: every fold converts
    model = make_model("3d", folds=(0, 1))
    cold = _load(model, "openvino")
    loading = [(1, 2, "loading"), (2, 2, "loading")]
    assert _steps(cold) == loading + [(1, 2, "preparing"), (1, 2, "converting"), (1, 2, "converted"),
                                      (2, 2, "preparing"), (2, 2, "converting"), (2, 2, "converted")]
    converted = [event for event in cold if event.step == "converted"]
    assert all(event.fold_seconds > 0 for event in converted)
    assert all(event.reason == "" and event.device == "CPU" for event in cold if event.step == "converting")
    times = [event.seconds_so_far for event in cold]
    assert times == sorted(times)

    warm = _load(model, "openvino")
    assert _steps(warm) == loading + [(1, 2, "preparing"), (1, 2, "cached"), (2, 2, "preparing"), (2, 2, "cached")]


def test_a_one_fold_model_reports_its_fold(ct_model: Path) -> None:
    events: list[LoadEvent] = []
    Predictor(ct_model, get_preset("fast").with_overrides(backend="torch"), device="cpu", on_load=events.append)
    assert _steps(events) == [(1, 1, "loading")]


def test_cancel_after_the_first_fold_stops_before_the_second(make_model) -> None:
    from tilewise.engine import Cancelled, CancelToken

    token = CancelToken()
    events: list[LoadEvent] = []

    def hear(event: LoadEvent) -> None:
        events.append(event)
        token.cancel()  # the person presses Cancel while fold 1 loads

    with pytest.raises(Cancelled):
        Predictor(make_model("3d", folds=(0, 1)), get_preset("fast").with_overrides(backend="torch"), device="cpu",
                  folds=["0", "1"], cancel=token, on_load=hear)
    assert _steps(events) == [(1, 2, "loading")]

"""Cancel means cancel in every stage: preprocessing (between slabs) and export (between slabs), not only between
tiles; a cancelled run returns nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

import model_factory
from tilewise.engine import Cancelled, Predictor, get_preset, read_volume
from tilewise.engine.runtime.parallel import cancellable, run_all


class CancelledAfter:
    """A cancel token that reads False ``reads`` times, then True (a user pressing Cancel mid-stage)."""

    def __init__(self, reads: int) -> None:
        self.reads, self.seen = reads, 0

    @property
    def cancelled(self) -> bool:
        self.seen += 1
        return self.seen > self.reads


def test_run_all_stops_between_slabs() -> None:
    from concurrent.futures import ThreadPoolExecutor

    ran: list[int] = []
    token = CancelledAfter(3)
    with ThreadPoolExecutor(1) as pool, cancellable(token), pytest.raises(Cancelled):
        run_all(pool, [lambda i=i: ran.append(i) for i in range(10)])
    assert 0 < len(ran) < 10


@pytest.fixture
def counting(ct_model: Path):
    predictor = Predictor(ct_model, get_preset("preview").with_overrides(backend="torch"), device="cpu")
    calls = {"forward": 0}
    real = predictor.backend

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, inputs):
            calls["forward"] += 1
            return real(inputs)

    predictor.backend = Counting()
    return predictor, calls


def test_cancel_during_preprocessing_runs_no_tile(counting, tmp_path: Path) -> None:
    predictor, calls = counting
    # a fine, large case: the model's coarser grid means a resampling in many slabs
    case = model_factory.make_case(tmp_path / "fine_0000.nii.gz", "3d", shape=(96, 120, 120),
                                   spacing=(0.4, 0.4, 0.5))
    with pytest.raises(Cancelled) as raised:
        predictor.predict(read_volume(case), cancel=CancelledAfter(2))
    assert calls["forward"] == 0
    stopped_in = [str(entry.path) for entry in raised.traceback]
    assert any(path.endswith("runtime/parallel.py") for path in stopped_in), "stopped inside the resampling"


def test_cancel_during_export_stops_between_slabs(counting, tmp_path: Path, monkeypatch) -> None:
    from tilewise.engine.postprocess import export as export_module

    predictor, calls = counting
    case = model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", shape=(40, 48, 56))
    slabs_done: list[int] = []
    real_slab = export_module._slab
    monkeypatch.setattr(export_module, "_slab", lambda *a: slabs_done.append(1) or real_slab(*a))
    monkeypatch.setattr(export_module, "slab_rows", lambda *a: 1)  # one row per slab
    token = CancelledAfter(10**6)

    def cancel_after_the_last_tile(event) -> None:
        if event.done == event.total:
            token.reads = token.seen + 2  # two more checks pass (end of the tiles, first slab), then cancelled

    with pytest.raises(Cancelled):
        predictor.predict(read_volume(case), on_event=cancel_after_the_last_tile, cancel=token)
    assert calls["forward"] > 0 and 0 < len(slabs_done) < 10

"""Cancel means cancel in every stage: preprocessing (between slabs) and export (between slabs), not only between
tiles; a cancelled run returns nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

import model_factory
from tilewise.engine import Cancelled, Predictor, get_preset, read_volume
from tilewise.engine.events import cancellable
from tilewise.engine.runtime.parallel import run_all


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
    predictor.streaming = False  # the whole-volume export after the tiles (a streaming run's: tests/test_streaming.py)
    case = model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", shape=(40, 48, 56))
    slabs_done: list[int] = []
    real_slab = export_module.slab_of
    monkeypatch.setattr(export_module, "slab_of", lambda *a: slabs_done.append(1) or real_slab(*a))
    monkeypatch.setattr(export_module, "slab_rows", lambda *a: 1)  # one row per slab
    token = CancelledAfter(10**6)

    def cancel_after_the_last_tile(event) -> None:
        if event.done == event.total:
            token.reads = token.seen + 2  # two more checks pass (end of the tiles, first slab), then cancelled

    with pytest.raises(Cancelled):
        predictor.predict(read_volume(case), on_event=cancel_after_the_last_tile, cancel=token)
    assert calls["forward"] > 0 and 0 < len(slabs_done) < 10


def test_cancel_while_converting_for_openvino_stops_between_folds(tmp_path: Path, monkeypatch) -> None:
    """The viewer's Cancel during a first reference run, which converts five folds: it stops after the fold that is
    converting (it took minutes before, with "waiting for the current tile" shown while no tile ran)."""
    import time

    from tilewise.engine import CancelToken
    from tilewise.engine.backends import openvino_backend

    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache: every fold converts
    token = CancelToken()
    prepared: list[int] = []
    real = openvino_backend.OpenVINOBackend._prepare_fold
    cancelled_at: list[float] = []

    def prepare(self, index, network):
        compiled = real(self, index, network)
        prepared.append(index)
        if index == 0:
            token.cancel()  # the person presses Cancel while the first fold converts
            cancelled_at.append(time.perf_counter())
        return compiled

    monkeypatch.setattr(openvino_backend.OpenVINOBackend, "_prepare_fold", prepare)
    with pytest.raises(Cancelled):
        Predictor("demo", get_preset("reference").with_overrides(backend="openvino"), device="cpu", cancel=token)
    latency = time.perf_counter() - cancelled_at[0]
    assert prepared == [0], "no fold after the cancel was converted"
    print(f"cancel during conversion returned {latency:.3f} s after the fold it interrupted")


def test_cancel_inside_a_fold_conversion_stores_nothing(tmp_path: Path, monkeypatch) -> None:
    """Cancel while a fold converts: it stops after the step that runs (convert, compile), caches nothing."""
    from tilewise.engine import CancelToken
    from tilewise.engine.backends import openvino_backend

    cache = tmp_path / "cache"
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(cache))
    token = CancelToken()
    real_convert = openvino_backend.OpenVINOBackend._convert
    steps: list[str] = []

    def convert(self, index, candidate, example):
        steps.append("convert")
        model = real_convert(self, index, candidate, example)
        token.cancel()  # pressed while the conversion ran
        return model

    real_compile = openvino_backend.OpenVINOBackend._compile
    monkeypatch.setattr(openvino_backend.OpenVINOBackend, "_convert", convert)
    monkeypatch.setattr(openvino_backend.OpenVINOBackend, "_compile",
                        lambda self, model: steps.append("compile") or real_compile(self, model))
    with pytest.raises(Cancelled):
        Predictor("demo", get_preset("preview").with_overrides(backend="openvino"), device="cpu", cancel=token)
    assert steps == ["convert"], "nothing after the cancelled step"
    assert not [p for p in cache.rglob("*") if p.is_file()], "no cache entry from a cancelled conversion"


def test_cancel_during_a_conversion_returns_at_once(tmp_path: Path, monkeypatch) -> None:
    """A conversion cannot be interrupted (seconds for the demo model): a cancel abandons it and returns."""
    import threading
    import time

    from tilewise.engine import CancelToken
    from tilewise.engine.backends import openvino_backend

    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    real_convert = openvino_backend.convert
    converting = threading.Event()

    def slow_convert(network, shape, example):
        converting.set()
        time.sleep(5)  # a long conversion
        return real_convert(network, shape, example)

    monkeypatch.setattr(openvino_backend, "convert", slow_convert)
    token = CancelToken()
    pressed: list[float] = []

    def press_cancel() -> None:
        converting.wait(60)
        pressed.append(time.perf_counter())
        token.cancel()

    threading.Thread(target=press_cancel, daemon=True).start()
    with pytest.raises(Cancelled):
        Predictor("demo", get_preset("preview").with_overrides(backend="openvino"), device="cpu", cancel=token)
    returned_after = time.perf_counter() - pressed[0]
    assert returned_after < 2.0, f"Cancel took {returned_after:.2f} s"

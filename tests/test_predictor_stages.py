"""The predictor's public stages: prepare -> run_tiles -> finish is predict, also interleaved over cases and on
other threads (as a batch runs them), also in nnU-Net-exact mode; the memory plan follows the budget given."""
from __future__ import annotations

import threading
from pathlib import Path

import model_factory
import numpy as np
import pytest
from tilewise.engine import Predictor, Volume, get_preset, read_volume
from tilewise.engine.errors import OutOfMemoryError
from tilewise.engine.preprocess.reuse import PreprocessCache
from tilewise.engine.runtime.memory_plan import MemoryBudget

SMALL = (24, 28, 32)
PLENTY = MemoryBudget(host_bytes=10**12, device_bytes=10**12)


def _predictor(model: Path, preset: str = "fast", nnunet_exact: bool = False) -> Predictor:
    return Predictor(model, get_preset(preset).with_overrides(backend="torch"), device="cpu", nnunet_exact=nnunet_exact)


@pytest.fixture
def volumes(tmp_path: Path) -> list[Volume]:
    return [read_volume(model_factory.make_case(tmp_path / f"s{n}_0000.nii.gz", "3d", shape=SMALL, seed=60 + n))
            for n in range(2)]


def _assert_same(staged, predicted) -> None:
    assert np.array_equal(staged.labels, predicted.labels)
    assert staged.geometry == predicted.geometry
    assert (staged.tiles, staged.forward_passes, staged.tiles_skipped) == (
        predicted.tiles, predicted.forward_passes, predicted.tiles_skipped)
    assert staged.notes == predicted.notes
    assert set(staged.timings) == set(predicted.timings) == {"load", "convert", "preprocess", "sliding_window",
                                                             "export"}


@pytest.mark.parametrize("nnunet_exact", [False, True])
def test_stages_interleaved_over_two_cases_on_other_threads_give_predicts_results(
        ct_model: Path, volumes: list[Volume], nnunet_exact: bool) -> None:
    predictor = _predictor(ct_model, nnunet_exact=nnunet_exact)
    expected = [predictor.predict(volume) for volume in volumes]

    first = predictor.prepare(volumes[0], budget=PLENTY)
    predictor.run_tiles(first)
    assert first.logits is not None and first.prepared is not None
    assert first.prepared.data.numel() == 0, "the network-grid input is dropped once the tiles ran"
    second: list = []
    reader = threading.Thread(target=lambda: second.append(predictor.prepare(volumes[1])))
    reader.start()  # the next case is prepared while this one is exported, as in a batch
    results = [predictor.finish(first)]
    reader.join()
    predictor.run_tiles(second[0])
    writer_results: list = []
    writer = threading.Thread(target=lambda: writer_results.append(predictor.finish(second[0])))
    writer.start()
    writer.join()
    results += writer_results

    assert first.logits is None, "finish lets go of the logits"
    for staged, predicted in zip(results, expected):
        _assert_same(staged, predicted)


def test_the_plan_follows_the_budget_given_before_any_work(ct_model: Path, volumes: list[Volume]) -> None:
    predictor = _predictor(ct_model)
    case = predictor.plan_case(volumes[0], PLENTY)
    assert case.prepared is None and case.plan is not None
    assert case.planned_peaks == (case.plan.peak_host_bytes, case.plan.peak_device_bytes)
    assert case.planned_peaks[0] > 0
    tight = predictor.plan_case(volumes[0], MemoryBudget(host_bytes=case.planned_peaks[0] // 4, device_bytes=0))
    assert tight.plan is not None and tight.plan.slab_bytes < case.plan.slab_bytes, "less memory: smaller slabs"
    cache = PreprocessCache()
    with pytest.raises(OutOfMemoryError):  # this machine has the memory; the budget given does not
        predictor.prepare(volumes[0], reuse=cache, budget=MemoryBudget(host_bytes=1000, device_bytes=0))
    assert cache.misses == 0, "a case that cannot fit is refused before preprocessing"


def test_exact_mode_cases_are_unplanned_and_their_stages_still_run_in_order(ct_model: Path,
                                                                            volumes: list[Volume]) -> None:
    predictor = _predictor(ct_model, nnunet_exact=True)
    case = predictor.prepare(volumes[0], budget=MemoryBudget(host_bytes=1000, device_bytes=0))  # never refused
    assert case.plan is None and case.planned_peaks == (0, 0)
    with pytest.raises(AssertionError, match="run_tiles first"):
        predictor.finish(case)
    predictor.run_tiles(case)
    assert np.array_equal(predictor.finish(case).labels, predictor.predict(volumes[0]).labels)


def test_prepare_lets_go_of_the_image_voxels_and_leaves_the_callers_volume_alone(
        ct_model: Path, volumes: list[Volume]) -> None:
    predictor = _predictor(ct_model)
    original = volumes[0].array.copy()
    case = predictor.prepare(volumes[0], budget=PLENTY)
    held = case.volume.array
    assert held.shape == original.shape and held.strides == (0,) * held.ndim, "no voxels held once preprocessed"
    assert case.volume.geometry == volumes[0].geometry and case.volume.sources == volumes[0].sources
    assert np.array_equal(volumes[0].array, original), "the caller's volume keeps its voxels"
    predictor.run_tiles(case)
    _assert_same(predictor.finish(case), predictor.predict(volumes[0]))

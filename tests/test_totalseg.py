"""TotalSegmentator's tasks run by Tilewise (``-m totalseg:<task>``) against TotalSegmentator's own Python API, both on
stand-in weight folders (:mod:`totalseg_factory`: its folder names, trainers, label sets and spacings, seeded random
weights) in a temporary ``TOTALSEG_WEIGHTS_PATH`` and on the same small CT-like (or MR-like) image.

With nnU-Net's sums made float32 in TotalSegmentator's run (:mod:`totalseg_reference`), Tilewise's ``reference``
preset must agree on >= 99.99 % of the voxels (it does on all of them here); with ``--nnunet-exact`` Tilewise must
equal stock TotalSegmentator (float16 sums). Covered: ``total``, ``total --fast``, ``total_mr``, a ``--roi_subset``
and the ``liver_vessels`` sub-task, which crops to the liver its rough model finds; ``--fast`` also on an image
whose voxel axes are not the patient's.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import totalseg_factory as tf
from totalseg_reference import run_totalsegmentator

pytest.importorskip("totalsegmentator", reason="needs the totalseg extra: pip install \"tilewise[totalseg]\"")

from tilewise.engine import Cancelled, CancelToken, get_preset, read_volume
from tilewise.engine.model.totalseg import resolve_task
from tilewise.engine.task_predictor import TaskPredictor, TaskResult

AGREEMENT = 0.9999
"""Voxels Tilewise's reference preset must share with TotalSegmentator run with float32 sums."""

CASES = {
    "total": ("ct", {"task": "total"}),
    "total_fast": ("ct", {"task": "total", "fast": True}),
    "total_fast_permuted_axes": ("ct_permuted", {"task": "total", "fast": True}),
    "total_mr": ("mr", {"task": "total_mr"}),
    "roi_subset": ("ct", {"task": "total", "roi_subset": ["liver"]}),
    "liver_vessels": ("ct", {"task": "liver_vessels"}),
}


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The stand-in weights (built once per test process), TotalSegmentator's settings folder, the test images."""
    return tf.standins(tmp_path_factory.getbasetemp() / "totalseg")


@pytest.fixture
def weights_env(standins: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(standins.weights))
    return standins


def _tilewise(image: Path, weights: Path, task: str, fast: bool = False, roi_subset: list[str] | None = None,
              statistics: bool = False, nnunet_exact: bool = False, on_event=None, cancel=None) -> TaskResult:
    predictor = TaskPredictor(resolve_task(task, fast, roi_subset, root=weights),
                              get_preset("reference").with_overrides(backend="torch"), device="cpu",
                              nnunet_exact=nnunet_exact)
    return predictor.predict(read_volume([image]), on_event=on_event, cancel=cancel, statistics=statistics)


@pytest.mark.parametrize("case", list(CASES))
def test_tilewise_agrees_with_totalsegmentator_with_float32_sums(case: str, standins: SimpleNamespace) -> None:
    image_kind, settings = CASES[case]
    image = getattr(standins, image_kind)
    statistics = case in ("total", "total_fast")
    theirs, their_stats = run_totalsegmentator(image, standins.weights, standins.home, statistics=statistics,
                                               **settings)
    events: list = []
    ours = _tilewise(image, standins.weights, settings["task"], settings.get("fast", False),
                     settings.get("roi_subset"), statistics, on_event=events.append)

    assert ours.labels.shape == theirs.shape == tf.TEST_SHAPE
    agreement = float((ours.labels == theirs).mean())
    assert agreement >= AGREEMENT, f"{case}: {agreement:.6f} of the voxels agree"
    found = set(np.unique(theirs).tolist()) - {0}
    assert found <= set(ours.label_names), "TotalSegmentator's class numbers"
    if case == "roi_subset":
        assert found == {resolve_task("total", root=standins.weights).main.value_of("liver")}
        assert sorted(ours.timings) == ["crop:Dataset298_TotalSegmentator_total_6mm_1559subj", "crop:back",
                                        "crop:grid", "total:Dataset291_TotalSegmentator_part1_organs_1559subj",
                                        "total:back", "total:grid"], "only the part holding the liver ran"
    else:
        assert len(found) > (1 if case == "liver_vessels" else 20), "a prediction worth comparing"
    if case in ("roi_subset", "liver_vessels"):  # the crop was one: the models ran on a part of the image
        assert np.prod(ours.grids[settings["task"] if case == "liver_vessels" else "total"]) < 0.5 * theirs.size
    assert [e.done for e in events] == list(range(1, ours.tiles + 1)) and events[-1].total == ours.tiles
    if statistics:
        assert list(ours.statistics) == list(their_stats)
        for name, values in their_stats.items():
            assert ours.statistics[name] == pytest.approx(values, abs=1e-6), name


def test_nnunet_exact_equals_stock_totalsegmentator(standins: SimpleNamespace) -> None:
    """Stock TotalSegmentator (nnU-Net's float16 sums) is what ``--nnunet-exact`` reproduces, voxel for voxel."""
    theirs, _ = run_totalsegmentator(standins.ct, standins.weights, standins.home, task="total", fast=True,
                                     float32_sums=False)
    exact = _tilewise(standins.ct, standins.weights, "total", fast=True, nnunet_exact=True)
    assert np.array_equal(exact.labels, theirs)


def test_parts_share_one_preprocessed_image_and_one_cancel_stops_them(standins: SimpleNamespace,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewise.engine import task_predictor
    from tilewise.engine.preprocess.reuse import PreprocessCache

    caches: list[PreprocessCache] = []
    monkeypatch.setattr(task_predictor, "PreprocessCache", lambda: caches.append(PreprocessCache()) or caches[-1])
    predictor = TaskPredictor(resolve_task("total", root=standins.weights),
                              get_preset("reference").with_overrides(backend="torch"), device="cpu")
    volume = read_volume([standins.ct])
    cancel, seen = CancelToken(), []

    def cancel_in_the_second_part(event) -> None:  # the five parts run the same number of tiles
        seen.append(event)
        if event.done > event.total // 5:
            cancel.cancel()

    with pytest.raises(Cancelled):
        predictor.predict(volume, on_event=cancel_in_the_second_part, cancel=cancel)
    assert (caches[0].hits, caches[0].misses) == (4, 1), "the five parts' plans preprocess alike: one preprocessing"
    assert seen and seen[-1].done < seen[-1].total, "stopped before the last tile"


def test_one_model_at_a_time_gives_the_same_labels_with_one_model_loaded(standins: SimpleNamespace) -> None:
    """``tilewise predict`` on one case loads each part's model as its part runs and lets it go after, as
    TotalSegmentator does (the peak is one model's): the labels are those of the task with all five loaded."""
    spec = resolve_task("total", root=standins.weights)
    preset = get_preset("reference").with_overrides(backend="torch")
    volume = read_volume([standins.ct])
    everything = TaskPredictor(spec, preset, device="cpu")
    assert len(everything.predictors) == 5
    expected = everything.predict(volume).labels
    del everything

    one_at_a_time = TaskPredictor(spec, preset, device="cpu", one_model_at_a_time=True)
    assert list(one_at_a_time.predictors) == [spec.parts_to_run[0].folder], "only the first model loaded up front"
    loaded, parts_seen = [], set()

    def watch(event) -> None:
        loaded.append(len(one_at_a_time.predictors))
        parts_seen.update(one_at_a_time.predictors)

    result = one_at_a_time.predict(volume, on_event=watch)
    assert np.array_equal(result.labels, expected)
    assert loaded and max(loaded) == 1, "never more than the running part's model"
    assert parts_seen == {part.folder for part in spec.parts_to_run} and not one_at_a_time.predictors
    assert one_at_a_time.model_folders == [part.folder for part in spec.parts_to_run]


def test_a_part_whose_plans_differ_is_preprocessed_for_itself(standins: SimpleNamespace, tmp_path: Path) -> None:
    from tilewise.engine.model.bundle import ModelBundle
    from tilewise.engine.preprocess.reuse import model_digest

    parts = resolve_task("total", root=standins.weights).main.parts
    first, second = (ModelBundle.load(p.folder) for p in parts[:2])
    assert model_digest(first) == model_digest(second), "same images, other labels: the same preprocessing"
    copy = shutil.copytree(parts[1].folder, tmp_path / parts[1].folder.name)
    plans = json.loads((copy / "plans.json").read_text())
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0
    (copy / "plans.json").write_text(json.dumps(plans))
    assert model_digest(ModelBundle.load(copy)) != model_digest(first), "other intensity statistics"


# ---- the command line --------------------------------------------------------------------------------------------

def test_models_lists_the_installed_tasks_not_their_folders(weights_env: SimpleNamespace, run_cli,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnUNet_results", raising=False)
    code, out, _ = run_cli(["models"])
    assert code == 0
    lines = out.splitlines()
    assert "  totalseg:total: 117 structures, --fast installed" in lines
    assert "  totalseg:total_mr: 50 structures, --fast not installed" in lines
    assert "  totalseg:liver_vessels: 2 structures" in lines
    assert "Dataset291" not in out, "tasks, not folders"

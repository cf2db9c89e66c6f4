"""``tilewise predict -m totalseg:<task>`` on the command line: a task on a folder of cases with its models loaded once,
TotalSegmentator's statistics written next to the labels, and every problem with a task one line before any model
loads (stand-in weights: :mod:`totalseg_factory`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import totalseg_factory as tf

pytest.importorskip("totalsegmentator", reason="needs the totalseg extra: pip install \"tilewise[totalseg]\"")

from tilewise.engine import get_preset, read_volume
from tilewise.engine.model.totalseg import resolve_task
from tilewise.engine.task_predictor import TaskPredictor


@pytest.fixture
def weights_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    standins = tf.standins(tmp_path_factory.getbasetemp() / "totalseg")
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(standins.weights))
    return standins


def _expected(standins: SimpleNamespace, **settings) -> object:
    predictor = TaskPredictor(resolve_task(settings.pop("task"), settings.pop("fast", False), root=standins.weights),
                              get_preset("reference").with_overrides(backend="torch"), device="cpu")
    return predictor.predict(read_volume([standins.ct]), **settings)


def test_predict_runs_a_task_and_writes_its_statistics(weights_env: SimpleNamespace, tmp_path: Path,
                                                       run_cli) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(weights_env.ct, cases / "a_0000.nii.gz")
    shutil.copy(weights_env.ct, cases / "b_0000.nii.gz")
    code, _, err = run_cli(["predict", "-i", cases, "-o", tmp_path / "out", "-m", "totalseg:total", "--fast",
                            "--statistics", "--backend", "torch", "-device", "cpu", "--report", tmp_path / "r.json"])
    assert code == 0, err
    expected = _expected(weights_env, task="total", fast=True, statistics=True)
    for case in ("a", "b"):
        written = read_volume([tmp_path / "out" / f"{case}.nii.gz"]).array[0]
        assert np.array_equal(written, expected.labels)
        statistics = json.loads((tmp_path / "out" / f"{case}_statistics.json").read_text())
        assert list(statistics) == list(expected.statistics)
        for name, values in expected.statistics.items():
            assert statistics[name] == pytest.approx({k: float(v) for k, v in values.items()}), name
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == "totalseg:total --fast" and len(report["models"]) == 1, "loaded once for both cases"


@pytest.mark.parametrize(("argv", "says"), [
    (["-m", "totalseg:totl"], "is not a TotalSegmentator task (did you mean 'totalseg:total'?)"),
    (["-m", "totalseg:total", "--roi_subset", "livr"], "has no structure 'livr' (did you mean 'liver'?)"),
    (["-m", "totalseg:liver_vessels", "--fast"], "has no --fast model"),
    (["-m", "totalseg:total_mr", "--fast"], "needs TotalSegmentator's model Dataset852_TotalSegMRI_total_3mm_1088subj"),
    (["-m", "totalseg:total", "--save_probabilities"], "--save_probabilities: is not available"),
])
def test_task_problems_are_one_line_before_any_model_loads(argv: list[str], says: str, weights_env: SimpleNamespace,
                                                          tmp_path: Path, run_cli) -> None:
    code, _, err = run_cli(["predict", "-i", weights_env.ct, "-o", tmp_path / "out", *argv])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert says in err
    assert not (tmp_path / "out").exists()


def test_without_the_totalsegmentator_package_a_task_says_how_to_get_it(weights_env: SimpleNamespace, tmp_path: Path,
                                                                       run_cli,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in [m for m in sys.modules if m == "totalsegmentator" or m.startswith("totalsegmentator.")]:
        monkeypatch.setitem(sys.modules, name, None)
    code, _, err = run_cli(["predict", "-i", weights_env.ct, "-o", tmp_path / "out", "-m", "totalseg:total"])
    assert code == 2 and 'pip install "tilewise[totalseg]"' in err and len(err.strip().splitlines()) == 1


def test_batch_loads_the_five_parts_once_for_all_cases(weights_env: SimpleNamespace, tmp_path: Path, run_cli,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewise.engine import task_predictor

    expected = _expected(weights_env, task="total")
    loaded: list[Path] = []
    real = task_predictor.Predictor
    monkeypatch.setattr(task_predictor, "Predictor",
                        lambda folder, *args, **kwargs: loaded.append(folder) or real(folder, *args, **kwargs))
    cases = tmp_path / "cases"
    cases.mkdir()
    for case in ("a", "b"):
        shutil.copy(weights_env.ct, cases / f"{case}_0000.nii.gz")
    argv = ["batch", "-i", cases, "-o", tmp_path / "out", "-m", "totalseg:total", "--backend", "torch", "-device", "cpu"]
    code, _, err = run_cli(argv)
    assert code == 0, err
    assert len(loaded) == 5 and len(set(loaded)) == 5, "each part loaded once for both cases"
    for case in ("a", "b"):
        assert np.array_equal(read_volume([tmp_path / "out" / f"{case}.nii.gz"]).array[0], expected.labels)
    summary = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    assert summary["model"] == "totalseg:total" and len(summary["models"]) == 5
    assert [c["status"] for c in summary["cases"]] == ["done"] * 2
    code, _, err = run_cli(argv)  # resumed: finished cases are checked and skipped, no model loads
    assert code == 0 and "2 skipped" in err and len(loaded) == 5


def test_batch_refuses_what_it_does_not_do_for_a_task(weights_env: SimpleNamespace, tmp_path: Path, run_cli) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(weights_env.ct, cases / "a_0000.nii.gz")
    code, _, err = run_cli(["batch", "-i", cases, "-o", tmp_path / "out", "-m", "totalseg:total", "--statistics"])
    assert code == 2 and "--statistics" in err and len(err.strip().splitlines()) == 1


def test_task_flags_need_a_task_and_bench_needs_a_model_folder(weights_env: SimpleNamespace, tmp_path: Path,
                                                               run_cli) -> None:
    code, _, err = run_cli(["predict", "-i", weights_env.ct, "-o", tmp_path / "out", "-m", "demo", "--roi_subset",
                            "liver", "--statistics"])
    assert code == 2 and "--roi_subset, --statistics are for TotalSegmentator's tasks" in err
    code, _, err = run_cli(["bench", "-i", weights_env.ct, "-m", "totalseg:total", "--batch"])
    assert code == 2 and "tilewise bench --batch runs one nnU-Net model folder" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["bench", "-i", weights_env.ct, "-m", "totalseg:total", "--against", "nnunet"])
    assert code == 2 and "not with nnunet" in err and len(err.strip().splitlines()) == 1


def test_bench_times_a_task_against_totalsegmentators_own_command(weights_env: SimpleNamespace, tmp_path: Path,
                                                                  run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(weights_env.home))  # its settings: no usage statistics sent
    workdir = tmp_path / "bench"
    code, out, err = run_cli(["bench", "-i", weights_env.ct, "-m", "totalseg:total", "--fast", "--against",
                              "totalsegmentator", "--backend", "torch", "-device", "cpu", "--workdir", workdir])
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["totalsegmentator_finished"] and summary["model"] == "totalseg:total --fast"
    assert summary["speedup"] == pytest.approx(summary["totalsegmentator_s"] / summary["ours_s"], rel=0.01)
    assert summary["ours_peak_mb"] > 100 and summary["totalsegmentator_peak_mb"] > 100
    ours = read_volume([workdir / "tilewise" / "case.nii.gz"]).array[0]
    theirs = read_volume([workdir / "totalsegmentator" / "case.nii.gz"]).array[0]
    assert np.array_equal(ours, _expected(weights_env, task="total", fast=True).labels)
    assert summary["voxel_agreement"] == pytest.approx(float((ours == theirs).mean()), abs=1e-6)
    assert summary["voxel_agreement"] > 0.95, "stock TotalSegmentator's float16 sums move only near-tie voxels"

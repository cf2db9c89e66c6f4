"""``tilewise bench`` runs both engines on the same input and reports comparable numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tilewise.engine.commands.metrics import dice_per_label
from tilewise.engine.commands.cli import main

REQUIRED = {"ours_s", "nnunet_s", "speedup", "dice_min", "preset", "device", "tiles", "tiles_per_s", "stages_s",
            "ours_peak_mb", "nnunet_peak_mb", "ours_peak_single_process_mb", "nnunet_peak_single_process_mb",
            "ours_peak_rss_mb_by_stage", "dice", "backend", "backend_description"}


def test_bench_against_nnunet_prints_json_last(ct_model: Path, ct_case: Path, capsys, monkeypatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))  # the measured peak goes here, not to ~/.cache
    code = main(["bench", "-m", str(ct_model), "-i", str(ct_case), "--preset", "fast", "--precision", "fp32",
                 "-device", "cpu", "--against", "nnunet"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    assert REQUIRED <= set(summary)
    assert summary["preset"] == "fast" and summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["backend"] in ("torch", "openvino") and summary["backend_description"].endswith(" fp32")
    assert f"backend {summary['backend_description']}" in out[0]
    assert summary["dice_min"] >= 0.999
    assert summary["speedup"] == pytest.approx(summary["nnunet_s"] / summary["ours_s"], rel=0.01)
    assert set(summary["stages_s"]) >= {"load", "preprocess", "sliding_window", "export"}
    by_stage = summary["ours_peak_rss_mb_by_stage"]
    assert list(by_stage) == ["preprocess", "sliding_window", "export", "write"]
    assert list(by_stage.values()) == sorted(by_stage.values()), "a running peak never falls"
    # nnU-Net forks workers: the sum over its processes is at least its largest single process
    assert summary["nnunet_peak_mb"] >= summary["nnunet_peak_single_process_mb"] > 100
    assert summary["ours_peak_mb"] >= by_stage["write"] * 0.9
    assert any(line.startswith("nnU-Net") for line in out) and any(line.startswith("speed-up") for line in out)
    # how far from the limit: the same operations per pass for both, over each one's timed sliding window
    assert summary["flop_per_forward_pass"] > 0 and summary["passes_per_tile"] == 1
    for engine, passes in (("ours", summary["forward_passes"]), ("nnunet", summary["tiles"])):
        seconds = summary[f"{engine}_sliding_window_s"]
        assert 0 < seconds < summary[f"{engine}_s"]
        rate = passes * summary["flop_per_forward_pass"] / seconds / 1e9
        assert summary[f"{engine}_gflops_per_s"] == pytest.approx(rate, rel=0.01)
        share = summary[f"{engine}_gflops_per_s"] / summary[f"{engine}_peak_gflops_per_s"]
        assert summary[f"{engine}_share_of_peak"] == pytest.approx(share, rel=0.01)
    assert sum(line.lstrip().startswith("compute") for line in out) == 2


def test_bench_without_comparison(ct_model: Path, ct_case: Path, capsys) -> None:
    assert main(["bench", "-m", str(ct_model), "-i", str(ct_case), "--preset", "preview", "-device", "cpu",
                 "--backend", "torch"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "nnunet_s" not in summary and summary["tiles"] >= 1 and summary["forward_passes"] == summary["tiles"]
    assert summary["backend"] == "torch"


def test_dice_per_label_ignores_background_and_scores_misses() -> None:
    a = np.array([0, 1, 1, 2, 2, 0])
    b = np.array([0, 1, 2, 2, 2, 3])
    assert dice_per_label(a, b) == {1: 2 / 3, 2: 0.8, 3: 0.0}

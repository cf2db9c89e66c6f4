"""``tilewise bench --batch``: our batch and nnU-Net's predictor on the same folder (two small cases of the demo
model, one fold, no mirroring), the real tools end to end; the last line is the JSON the README's table comes from."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "demo" / "sample_t1.nii.gz"


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilewise.engine", "bench", "--batch", *args], cwd=cwd,
                          capture_output=True, text=True, encoding="utf-8", timeout=900)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two distinct 120 mm cubes of the sample, one NIfTI and one NRRD (bench stages them as nnU-Net names them)."""
    cases = tmp_path_factory.mktemp("bench_batch") / "cases"
    cases.mkdir()
    sample = sitk.ReadImage(str(SAMPLE))
    sitk.WriteImage(sample[33:153, 49:169, 37:157], str(cases / "first_0000.nii.gz"))
    sitk.WriteImage(sample[40:160, 55:175, 30:150], str(cases / "second_0000.nrrd"))
    return cases


def test_bench_batch_times_both_tools_on_every_case_and_compares_their_labels(folder: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    completed = _bench("-m", "demo", "-i", str(folder), "-f", "0", "--disable_tta", "-step_size", "0.5",
                       "-device", "cpu", "--workdir", str(work), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["cases"] == 2 and result["folds"] == ["0"] and not result["mirroring"]
    assert result["nnunet_finished"]
    assert result["ours_cases_per_min"] == pytest.approx(2 * 60 / result["ours_s"], rel=0.01)
    assert result["nnunet_cases_per_min"] == pytest.approx(2 * 60 / result["nnunet_s"], rel=0.01)
    assert result["speedup"] == pytest.approx(result["nnunet_s"] / result["ours_s"], rel=0.01)
    assert result["resume_s"] > 0 and result["sliding_window_s_per_case"] > 0
    assert result["dice_min"] > 0.99, "both tools segment the same cases the same way"
    for tool in ("tilewise", "nnunet"):
        written = sorted(p.name for p in (work / tool).glob("*.nii.gz"))
        assert written == ["first.nii.gz", "second.nii.gz"], (tool, written)
    summary = json.loads((work / "tilewise" / "batch_summary.json").read_text(encoding="utf-8"))
    assert [case["status"] for case in summary["cases"]] == ["skipped", "skipped"], "the resume found both done"
    assert "speed-up" in completed.stdout and "cases/min" in completed.stdout


def test_bench_batch_refuses_dicom_and_exact_mode_in_one_line(folder: Path, tmp_path: Path) -> None:
    series = tmp_path / "cases" / "series"
    series.mkdir(parents=True)
    image = sitk.Cast(sitk.ReadImage(str(SAMPLE))[60:90, 60:90, 60:66], sitk.sitkInt16)
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        plane.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        plane.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.66.1")
        sitk.WriteImage(plane, str(series / f"{k:03d}.dcm"))
    completed = _bench("-m", "demo", "-i", str(series.parent), "-device", "cpu", cwd=tmp_path)
    assert completed.returncode == 2 and "nnU-Net reads no DICOM" in completed.stderr
    assert "Traceback" not in completed.stderr
    completed = _bench("-m", "demo", "-i", str(folder), "--nnunet-exact", cwd=tmp_path)
    assert completed.returncode == 2 and "--nnunet-exact" in completed.stderr and "Traceback" not in completed.stderr

"""``tilewise --self-test``: passes on a working installation, fails with the reason when results are wrong."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import tilewise.resources
from tilewise.engine.commands.cli import main
from tilewise.engine.commands.metrics import dice_per_label


def test_self_test_passes_from_the_command_line() -> None:
    completed = subprocess.run([sys.executable, "-m", "tilewise.engine", "--self-test", "--device", "cpu"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "self-test passed" in out
    for field in ("torch:", "nnunetv2:", "tilewise:", "device: cpu", "backend:", "dice:", "timing:"):
        assert field in out
    dice = [float(part.split()[-1]) for part in out.split("dice:")[1].split("(")[0].split(",")]
    assert len(dice) == 3 and min(dice) >= 0.9


def _write_labels_like_reference(values: np.ndarray, target: Path) -> None:
    reference = sitk.ReadImage(str(tilewise.resources.reference_labels_path()))
    image = sitk.GetImageFromArray(values.astype(np.uint8))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(target))


def test_self_test_fails_when_results_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tilewise.resources.reference_labels_path())))
    swapped = reference.copy()
    swapped[reference == 1], swapped[reference == 2] = 2, 1  # grey and white matter swapped: a broken model
    wrong = tmp_path / "wrong.nii.gz"
    _write_labels_like_reference(swapped, wrong)
    monkeypatch.setattr(tilewise.resources, "reference_labels_path", lambda: wrong)
    assert main(["--self-test", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("self-test FAILED: label 'grey_matter' has Dice") or "white_matter" in err
    assert err.count("\n") == 1


def test_self_test_fails_when_a_bundled_file_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(tilewise.resources, "sample_path", lambda: tmp_path / "gone.nii.gz")
    assert main(["--self-test"]) == 1
    assert "gone.nii.gz: bundled file is missing" in capsys.readouterr().err


def test_dice_per_label() -> None:
    a = np.array([0, 1, 1, 2, 2, 2])
    b = np.array([0, 1, 2, 2, 2, 0])
    scores = dice_per_label(a, b, [1, 2, 3])
    assert scores[1] == pytest.approx(2 * 1 / 3)
    assert scores[2] == pytest.approx(2 * 2 / 6)
    assert scores[3] == 1.0

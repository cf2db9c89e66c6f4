"""Is this image right for this model? The demo (brain T1 MR) model given a CT, a CT model given an MR, far-off
voxel spacing and NaN voxels: a plain warning line each (exit 0), or with --strict-input a one-line refusal (exit 2;
in batch the case fails with that reason)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from image_factory import ct_like, mr_like
from tilewise.engine import Finding, check_image, read_volume
from tilewise.engine.model.suitability import assess, input_policy
from tilewise.resources import demo_model_dir

DEMO = demo_model_dir()
DEMO_PLANS = json.loads((DEMO / "plans.json").read_text())
DEMO_DATASET = json.loads((DEMO / "dataset.json").read_text())
WARNING_PREFIX = "tilewise: warning: "
ERROR_PREFIX = "tilewise: error: "


def predict(source: Path, out: Path, model: object, *extra: object) -> list:
    return ["predict", "-i", source, "-o", out, "-m", model, "-device", "cpu", "--preset", "preview", *extra]


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(WARNING_PREFIX)]


# ---- the demo brain MR model and a CT -----------------------------------------------------------------------------
def test_demo_model_given_a_ct_warns_in_plain_words(tmp_path: Path, run_cli) -> None:
    source = ct_like(tmp_path / "ct.nii.gz")

    code, out, err = run_cli(predict(source, tmp_path / "out", "demo"))

    assert code == 0, err
    found = warnings_in(err)
    assert len(found) == 1, err
    assert "This model was trained on brain MR; this image looks like CT" in found[0]
    assert str(source) in found[0]
    assert "Traceback" not in out + err
    assert (tmp_path / "out" / "ct.nii.gz").is_file()
    assert input_policy().warn is None, "the command line's policy stays with the command"


def test_demo_model_given_a_ct_with_strict_input_refuses_it(tmp_path: Path, run_cli) -> None:
    source = ct_like(tmp_path / "ct.nii.gz")

    code, _, err = run_cli(predict(source, tmp_path / "out", "demo", "--strict-input"))

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR_PREFIX) and "looks like CT" in lines[0] and "--strict-input" in lines[0]
    assert not (tmp_path / "out" / "ct.nii.gz").exists()


def test_a_dicom_modality_is_named() -> None:
    array = np.full((1, 20, 20, 20), 300.0, np.float32)
    findings = assess(array, [2.0, 2.0, 2.0], DEMO_PLANS, DEMO_DATASET, "3d_fullres", modality="CT")
    assert findings == [Finding("modality", "This model was trained on brain MR; this image is CT (its DICOM "
                                            "Modality is CT)")]
    assert assess(array, [2.0, 2.0, 2.0], DEMO_PLANS, DEMO_DATASET, "3d_fullres", modality="MR") == []


def test_the_sample_t1_has_no_finding() -> None:
    assert check_image(read_volume(DEMO.parent / "sample_t1.nii.gz"), "demo") == []


# ---- a CT model and an MR -----------------------------------------------------------------------------------------
def test_ct_model_given_an_mr_warns(tmp_path: Path, ct_model: Path, run_cli) -> None:
    plans = json.loads((ct_model / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]
    source = mr_like(tmp_path / "mr.nii.gz")

    code, _, err = run_cli(predict(source, tmp_path / "out", ct_model))

    assert code == 0, err
    found = warnings_in(err)
    assert len(found) == 1, err
    assert "This model was trained on" in found[0] and "CT; this image has no value below -500" in found[0]

    code, _, err = run_cli(predict(source, tmp_path / "strict", ct_model, "--strict-input"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_ct_model_given_a_ct_far_outside_its_intensities_says_so(ct_model: Path) -> None:
    plans = json.loads((ct_model / "plans.json").read_text())
    dataset = json.loads((ct_model / "dataset.json").read_text())
    shifted = np.random.default_rng(2).uniform(-3000, -2000, (1, 20, 20, 20)).astype(np.float32)
    findings = assess(shifted, list(plans["configurations"]["3d_fullres"]["spacing"]), plans, dataset, "3d_fullres")
    assert [f.kind for f in findings] == ["intensity"]
    assert "outside the range the model was trained on" in findings[0].message


# ---- spacing and NaN ----------------------------------------------------------------------------------------------
def test_spacing_far_from_the_training_spacing_warns(tmp_path: Path, capfd) -> None:
    source = tmp_path / "thin.nii.gz"
    image = sitk.ReadImage(str(DEMO.parent / "sample_t1.nii.gz"))
    image = sitk.Resample(image, [60, 60, 20], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                          (0.1, 0.1, 10.0), image.GetDirection())
    sitk.WriteImage(image, str(source))
    findings = check_image(read_volume(source), "demo")
    assert [f.kind for f in findings] == ["spacing"]
    assert "0.1 x 0.1 x 10 mm" in findings[0].message and "2 x 2 x 2 mm" in findings[0].message


def test_all_nan_image_is_one_line_without_numpy_warnings(tmp_path: Path, run_cli) -> None:
    source = tmp_path / "nan.mha"  # MetaImage keeps NaN (SimpleITK's NIfTI writer does not)
    image = sitk.GetImageFromArray(np.full((20, 24, 24), np.nan, np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(source))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        findings = check_image(read_volume(source), "demo")
    assert [f.kind for f in findings] == ["non_finite"] and "every voxel" in findings[0].message

    code, out, err = run_cli(predict(source, tmp_path / "out", "demo"))

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and "NaN" in lines[0], err
    assert "RuntimeWarning" not in err and "Traceback" not in out + err


def test_some_infinite_voxels_are_counted() -> None:
    array = np.full((1, 10, 10, 10), 500.0, np.float32)
    array[0, 0, 0, :4] = np.inf
    findings = assess(array, [2.0, 2.0, 2.0], DEMO_PLANS, DEMO_DATASET, "3d_fullres")
    assert findings[0].kind == "non_finite" and "4 voxels" in findings[0].message


# ---- batch ----------------------------------------------------------------------------------------------------------
def test_batch_strict_input_fails_the_case_with_the_reason(tmp_path: Path, run_cli) -> None:
    ct_like(tmp_path / "in" / "ct_0000.nii.gz")
    out = tmp_path / "out"

    code, _, err = run_cli(["batch", "-i", tmp_path / "in", "-o", out, "-m", "demo", "-device", "cpu", "--preset",
                            "preview", "--strict-input", "--disable_progress_bar", "-q"])

    assert code == 3, err
    summary = json.loads((out / "batch_summary.json").read_text())
    (record,) = summary["cases"]
    assert record["status"] == "failed" and "looks like CT" in record["reason"]
    assert not (out / "ct.nii.gz").exists()


def test_demo_model_given_a_dicom_ct_series_names_its_modality(tmp_path: Path, run_cli) -> None:
    from dicom_factory import write_ct_series

    write_ct_series(sitk.ReadImage(str(ct_like(tmp_path / "ct.nii.gz"))), tmp_path / "study")

    code, _, err = run_cli(predict(tmp_path / "study", tmp_path / "out", "demo"))

    assert code == 0, err
    (found,) = warnings_in(err)
    assert "This model was trained on brain MR; this image is CT (its DICOM Modality is CT)" in found

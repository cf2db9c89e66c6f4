"""nnU-Net's ``-prev_stage_predictions FOLDER`` on ``predict`` and ``batch``: a cascade's full-res stage fed the
previous stage's segmentation file instead of running that stage. Fed the same low-res file, the full-res stage
alone equals nnU-Net's (float32 sums) on a CT-sized case; so does the whole cascade (issue 26: a few low-res voxels
that the export's float32 rounding flipped were spread by the full-res network, see tests/test_export_ties.py). A
missing or misplaced file is one line and exit 2 before any work."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import model_factory
import numpy as np
import pytest
import SimpleITK as sitk
from parity_helpers import assert_equal_to_float32_sums
from tilewise.engine import Predictor, get_preset, read_volume
from tilewise.engine.commands.cli import build_parser

CT_SHAPE, CT_SPACING = (176, 176, 176), (0.8, 0.8, 1.0)
"""The issue's crop size; SimpleITK (x, y, z) spacing: both stages resample, the full-res grid is 176 x 141 x 141."""
SETTINGS = ["-f", "0", "--disable_tta", "-step_size", "1", "-device", "cpu"]
PREVIEW = get_preset("preview").with_overrides(backend="torch")


@pytest.fixture(scope="module")
def cascade(model_root: Path) -> Path:
    return model_factory.make_cascade_model(model_root)


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct176") / "in"
    return model_factory.case_files(folder, "ct", "lowres", shape=CT_SHAPE, spacing=CT_SPACING, seed=3)


@pytest.fixture(scope="module")
def nnunet_two_step(cascade: Path, ct_case: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's float32-sum prediction of the CT-sized case with the issue's settings: (low-res stage, full-res
    stage on the low-res stage's file)."""
    return model_factory.nnunet_cascade_reference(cascade, ct_case, step=1.0, mirroring=False, float32_sums=True)


def write_lowres(labels: np.ndarray, image: Path, folder: Path, case: str = "ct") -> Path:
    """``labels`` written as nnU-Net's SimpleITK writer writes the low-res stage's output for ``image``."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    _, properties = SimpleITKIO().read_images([str(image)])
    folder.mkdir(parents=True, exist_ok=True)
    SimpleITKIO().write_seg(labels, str(folder / f"{case}.nii.gz"), properties)
    return folder / f"{case}.nii.gz"


def alone(model: Path, tmp_path: Path) -> Path:
    """A copy of ``model`` without its sibling folders (no 3d_lowres stage next to it)."""
    return Path(shutil.copytree(model, tmp_path / "results" / model.name))


def test_full_res_stage_alone_equals_nnunets_on_the_same_lowres_file(cascade: Path, ct_case: list[Path],
                                                                      nnunet_two_step, tmp_path: Path,
                                                                      run_cli) -> None:
    lowres, expected = nnunet_two_step
    previous = write_lowres(lowres, ct_case[0], tmp_path / "lowres").parent
    code, _, err = run_cli(["predict", "-i", ct_case[0].parent, "-o", tmp_path / "out", "-m", alone(cascade, tmp_path),
                            "-prev_stage_predictions", previous, "--backend", "torch", "--report",
                            tmp_path / "report.json", *SETTINGS])

    assert code == 0, err
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz")))
    assert_equal_to_float32_sums(written, expected)  # >= 99.9999 % of voxels (measured: every voxel)
    timings = json.loads((tmp_path / "report.json").read_text())["cases"][0]["timings"]
    assert "3d_lowres:to_input" in timings and "3d_lowres:sliding_window" not in timings, "the file, not the stage"


def test_whole_cascade_equals_nnunets_two_step_prediction(cascade: Path, ct_case: list[Path],
                                                          nnunet_two_step) -> None:
    result = Predictor(cascade, get_preset("reference").with_overrides(backend="torch", mirroring=False,
                                                                        tile_step=1.0), device="cpu",
                       folds=["0"]).predict(read_volume(ct_case))
    assert "3d_lowres:sliding_window" in result.timings
    assert_equal_to_float32_sums(result.labels, nnunet_two_step[1])  # measured: every voxel


def test_predict_and_batch_use_the_file_named_like_the_case(cascade: Path, tmp_path: Path, run_cli) -> None:
    files = model_factory.case_files(tmp_path / "in", "case", "lowres")
    volume = read_volume(files)
    lowres = Predictor(cascade.parent / cascade.name.replace("3d_cascade_fullres", "3d_lowres"), PREVIEW,
                       device="cpu").predict(volume).labels
    given = np.flip(lowres, 1).copy()  # not what the low-res stage gives: the full-res stage must read the file
    previous = write_lowres(given, files[0], tmp_path / "lowres", "case").parent
    expected = Predictor(cascade, PREVIEW, device="cpu", run_previous_stage=False).predict(volume, previous_labels=given)
    assert not np.array_equal(expected.labels, Predictor(cascade, PREVIEW, device="cpu").predict(volume).labels)

    for command, spelling in (("predict", "-prev_stage_predictions"), ("batch", "--prev-stage-predictions")):
        code, _, err = run_cli([command, "-i", tmp_path / "in", "-o", tmp_path / command, "-m", cascade, spelling,
                                previous, "--preset", "preview", "--backend", "torch", "-device", "cpu"])
        assert code == 0, err
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / command / "case.nii.gz")))
        assert np.array_equal(written, expected.labels), command
    parsed = build_parser().parse_args(["predict", "-i", "in", "-o", "out", "-m", "m", "--prev_stage_predictions", "p"])
    assert parsed.prev_stage_predictions == Path("p")


def _one_line_before_any_work(result, out: Path, *words: str) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists() or not any(out.iterdir()), "nothing written"


@pytest.mark.parametrize("command", ["predict", "batch"])
def test_a_missing_or_misplaced_lowres_file_is_one_line_exit_2(cascade: Path, make_model, tmp_path: Path, run_cli,
                                                               command: str) -> None:
    files = model_factory.case_files(tmp_path / "in", "case", "lowres")
    model = alone(cascade, tmp_path)

    def run(previous: Path, model_dir: Path = model) -> tuple:
        return run_cli([command, "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model_dir,
                        "-prev_stage_predictions", previous, "--preset", "preview", "-device", "cpu"])

    (tmp_path / "empty").mkdir()
    _one_line_before_any_work(run(tmp_path / "empty"), tmp_path / "out", str(tmp_path / "empty" / "case.nii.gz"),
                              "not found")
    labels = np.zeros(read_volume(files).shape, np.uint8)
    moved = write_lowres(labels, files[0], tmp_path / "moved", "case")
    image = sitk.ReadImage(str(moved))
    image.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(image, str(moved))
    _one_line_before_any_work(run(moved.parent), tmp_path / "out", str(moved), "grid", "origin")
    cropped = tmp_path / "cropped" / "case.nii.gz"
    cropped.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(files[0]))[:, :, 1:], str(cropped))
    _one_line_before_any_work(run(cropped.parent), tmp_path / "out", str(cropped), "size")
    fine = write_lowres(labels, files[0], tmp_path / "fine", "case").parent
    _one_line_before_any_work(run(fine, make_model("lowres")), tmp_path / "out", "not a cascade stage")
    _one_line_before_any_work(run(tmp_path / "nowhere"), tmp_path / "out", "takes a folder")

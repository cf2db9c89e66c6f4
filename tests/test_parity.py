"""At the Reference preset our labels match nnU-Net's own nnUNetPredictor on the same input."""
from __future__ import annotations

from pathlib import Path

import pytest

import model_factory
from tilewise.engine import Predictor, get_preset, read_volume
from parity_helpers import assert_equal_to_float32_sums, assert_parity

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z
OBLIQUE_CASE = {"direction": OBLIQUE, "origin": (10.0, -20.0, 5.0), "spacing": (1.2, 0.9, 1.5)}
ANISO = {"spacing": (0.8, 0.8, 4.0), "shape": (14, 60, 52)}
"""Cases test_nnunet_exact.py uses too: the same image bytes and settings share one stock nnU-Net run (the cache in
model_factory.nnunet_reference)."""


STOCK_DICE = 0.995
"""Against stock nnU-Net (float16 sums) labels differ by nnU-Net's own rounding: measured down to 0.998 here
(two-channel, no mirroring). ``--nnunet-exact`` is the mode that equals it voxel for voxel (test_nnunet_exact.py)."""


CASES = [
    pytest.param("3d", {}, True, id="3d_fullres-mirrored"),
    pytest.param("3d", {}, False, id="3d_fullres-no-mirroring"),
    pytest.param("2d", {}, True, id="2d-mirrored"),
    pytest.param("2d", {}, False, id="2d-no-mirroring"),
    pytest.param("aniso", ANISO, True, id="anisotropic-separate-z-mirrored"),
    pytest.param("aniso", ANISO, False, id="anisotropic-separate-z-no-mirroring"),
    pytest.param("transposed", {}, True, id="transposed-axes-mirrored"),
    pytest.param("transposed", {}, False, id="transposed-axes-no-mirroring"),
    # Mirroring is the same code for every kind but the axes it flips: the kinds whose axes differ (2D, anisotropic,
    # transposed) run both ways above; these run one way, each (with its stock nnU-Net reference) once
    pytest.param("two_channel", {}, False, id="two-channel"),
    pytest.param("regions", {}, False, id="region-based"),
    pytest.param("3d", OBLIQUE_CASE, False, id="oblique-direction"),
    pytest.param("resenc", {}, False, id="residual-encoder"),
    pytest.param("lowres", {}, False, id="3d_lowres"),
]


@pytest.mark.parametrize(("kind", "case_kwargs", "mirroring"), CASES)
def test_reference_preset_matches_nnunet(make_model, tmp_path: Path, kind: str, case_kwargs: dict,
                                         mirroring: bool) -> None:
    model_dir = make_model(kind)
    files = model_factory.case_files(tmp_path, "case", kind, **case_kwargs)
    volume = read_volume(files)

    stock = model_factory.nnunet_reference(model_dir, files, folds=(0,), step=0.5, mirroring=mirroring)
    float32_sums = model_factory.nnunet_reference(model_dir, files, folds=(0,), step=0.5, mirroring=mirroring,
                                                  float32_sums=True)
    preset = get_preset("reference").with_overrides(mirroring=mirroring)
    for backend in ("torch", "openvino"):  # PyTorch runs on GPUs, OpenVINO on CPUs: both must match nnU-Net
        predictor = Predictor(model_dir, preset.with_overrides(backend=backend), device="cpu")
        result = predictor.predict(volume)
        assert predictor.settings.backend == backend
        assert_parity(result.labels, stock, STOCK_DICE)
        if backend == "torch":  # the same convolutions as nnU-Net's: its float32-sum algorithm, voxel for voxel
            assert_equal_to_float32_sums(result.labels, float32_sums)
        else:  # OpenVINO's convolutions round differently from PyTorch's
            assert_parity(result.labels, float32_sums)
        assert result.geometry.same_as(volume.geometry)


def test_several_folds_are_averaged_like_nnunet(make_model, tmp_path: Path) -> None:
    model_dir = make_model("3d", folds=(0, 1, 2))
    files = model_factory.case_files(tmp_path, "case", "3d", seed=3)

    predictor = Predictor(model_dir, get_preset("reference").with_overrides(backend="torch"), device="cpu")
    assert predictor.settings.folds == ["0", "1", "2"]
    result = predictor.predict(read_volume(files))
    reference = model_factory.nnunet_reference(model_dir, files, folds=(0, 1, 2), step=0.5, mirroring=True)
    float32_sums = model_factory.nnunet_reference(model_dir, files, folds=(0, 1, 2), step=0.5, mirroring=True,
                                                  float32_sums=True)

    assert_parity(result.labels, reference, STOCK_DICE)
    assert_equal_to_float32_sums(result.labels, float32_sums)
    assert result.forward_passes == result.tiles * 8 * 3


PERMUTED_AND_FLIPPED = (0.0, 0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0)  # x <-> z swapped, y flipped (a rotation)


@pytest.mark.parametrize("reader", ["NibabelIOWithReorient", "NibabelIO"])
def test_models_read_with_the_reader_their_plans_name(make_model, tmp_path: Path, reader: str) -> None:
    import json
    import shutil

    model_dir = Path(shutil.copytree(make_model("3d"), tmp_path / "model"))
    plans = json.loads((model_dir / "plans.json").read_text())
    plans["image_reader_writer"] = reader
    (model_dir / "plans.json").write_text(json.dumps(plans))
    files = model_factory.case_files(tmp_path, "case", "3d", direction=PERMUTED_AND_FLIPPED, shape=(36, 44, 52))
    volume = read_volume(files)

    theirs = model_factory.nnunet_reference(model_dir, files, folds=(0,), step=0.5, mirroring=False,
                                            float32_sums=True)
    predictor = Predictor(model_dir, get_preset("reference").with_overrides(mirroring=False, backend="torch"),
                          device="cpu")
    result = predictor.predict(volume)

    assert result.labels.shape == volume.shape and result.geometry.same_as(volume.geometry)
    assert_equal_to_float32_sums(result.labels, theirs)
    if reader == "NibabelIOWithReorient":  # NibabelIO's arrays are SimpleITK's; a reorienting reader's are not
        predictor.reader = "SimpleITKIO"  # what Tilewise did before: the network saw the anatomy mirrored
        assert (predictor.predict(volume).labels != theirs).mean() > 0.001, "the test must tell the readers apart"

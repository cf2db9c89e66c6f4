"""Run-time estimates: tile counts before a run match the run, and the time per pass is a real measurement."""
from __future__ import annotations

from pathlib import Path

import pytest

import model_factory
from tilewise.engine import ModelBundle, Predictor, get_preset, read_volume
from tilewise.engine.estimate import ModelGrid, count_tiles, estimate_run, network_grid_shape, nonzero_extent, passes_per_tile, time_forward_pass


@pytest.mark.parametrize("preset_name", ["reference", "fast", "preview"])
@pytest.mark.parametrize("kind,shape", [("3d", (40, 48, 56)), ("aniso", (12, 60, 52)), ("2d", (6, 70, 64))])
def test_tile_count_matches_the_run(make_model, tmp_path: Path, kind: str, shape: tuple[int, int, int],
                                    preset_name: str) -> None:
    """CT-like cases are never cropped (air is not zero), so the estimate's grid is the run's grid."""
    model = make_model(kind)
    case = model_factory.make_case(tmp_path / "case_0000.nii.gz", kind, shape=shape)
    volume = read_volume(case)
    preset = get_preset(preset_name).with_overrides(skip_empty_tiles=False, mirroring=False, precision="fp32")
    result = Predictor(model, preset, device="cpu").predict(volume)
    grid = ModelGrid.of(ModelBundle.load(model))
    spacing_zyx = volume.geometry.spacing[::-1]
    estimate = estimate_run(grid, preset, 1, volume.shape, spacing_zyx, seconds_per_pass=0.5)
    assert estimate.tiles == result.tiles
    assert estimate.passes_per_tile == 1
    assert estimate.seconds == pytest.approx(result.tiles * 0.5 + estimate.overhead_s)


def test_passes_per_tile_counts_mirrors_and_folds(ct_model: Path) -> None:
    grid = ModelGrid.of(ModelBundle.load(ct_model))
    assert len(grid.mirror_axes) == 3
    assert passes_per_tile(grid, mirroring=True, fold_count=5) == 40  # nnU-Net's 8 mirrors x 5 folds
    assert passes_per_tile(grid, mirroring=False, fold_count=2) == 2


def test_grid_shape_follows_the_models_spacing(ct_model: Path) -> None:
    grid = ModelGrid.of(ModelBundle.load(ct_model))
    coarse = network_grid_shape(grid, (100, 100, 100), [s * 2 for s in grid.spacing])
    fine = network_grid_shape(grid, (100, 100, 100), grid.spacing)
    assert fine == (100, 100, 100)
    assert coarse == (200, 200, 200)
    assert count_tiles(grid, coarse, 0.5) > count_tiles(grid, fine, 0.5) > count_tiles(grid, fine, 1.0)


def test_time_forward_pass_measures_one_pass(ct_model: Path) -> None:
    one = Predictor(ct_model, get_preset("fast").with_overrides(precision="fp32"), device="cpu")
    mirrored = Predictor(ct_model, get_preset("reference"), device="cpu")
    single = time_forward_pass(one)
    per_pass_of_eight = time_forward_pass(mirrored)
    assert single > 0 and per_pass_of_eight > 0
    # the mirrored predictor runs 8 passes per call; divided by them it is the same pass (generous: shared CPU)
    assert 0.25 < per_pass_of_eight / single < 4


def test_nonzero_extent_is_the_crop_nnunet_makes() -> None:
    import numpy as np

    array = np.zeros((40, 50, 60), dtype=np.float32)
    array[5:30, 10:22, 7:59] = 1.0
    extent = nonzero_extent([array])
    assert all(true <= got <= true + 8 for true, got in zip((25, 12, 52), extent)), extent
    assert nonzero_extent([np.zeros((8, 8, 8))]) == (8, 8, 8)


@pytest.mark.parametrize("preset_name", ["balanced", "preview"])
def test_demo_sample_estimate_counts_the_cropped_tiles(preset_name: str) -> None:
    """The sample is skull-stripped: nnU-Net crops the black background away, and so does the estimate."""
    from tilewise.resources import demo_model_dir, sample_path

    volume = read_volume(sample_path())
    preset = get_preset(preset_name).with_overrides(folds=1, skip_empty_tiles=False)
    result = Predictor(demo_model_dir(), preset, device="cpu").predict(volume)
    grid = ModelGrid.of(ModelBundle.load(demo_model_dir(), fold_count=1))
    estimate = estimate_run(grid, preset, 1, nonzero_extent(volume.array), volume.geometry.spacing[::-1], 0.1)
    assert estimate.tiles == result.tiles

"""Run-time estimates: tile counts before a run match the run, and the time per pass is a real measurement."""
from __future__ import annotations

from pathlib import Path

import model_factory
import pytest
from tilewise.engine import ModelBundle, Predictor, get_preset, read_volume
from tilewise.engine.backends.ov_cache import CacheKey, ModelCache
from tilewise.engine.backends.select import openvino_available
from tilewise.engine.estimate import (
    PRIORS,
    ModelGrid,
    Span,
    cached_folds,
    count_tiles,
    estimate_run,
    learn_from_run,
    network_grid_shape,
    nonzero_extent,
    passes_per_tile,
    time_forward_pass,
    with_priors,
)


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
    estimate = estimate_run(grid, preset, 1, volume.shape, spacing_zyx, with_priors(0.5))
    assert estimate.tiles == result.tiles
    assert estimate.passes_per_tile == 1
    assert estimate.stages["sliding_window"] == Span.of(result.tiles * 0.5)


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
    # the best of several calls, measured before and after the other, so a busy moment on a shared CPU cannot
    # make one of them look slow
    single = min(time_forward_pass(one, repeats=6), time_forward_pass(one, repeats=6))
    per_pass_of_eight = time_forward_pass(mirrored, repeats=6)
    single = min(single, time_forward_pass(one, repeats=6))
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
    estimate = estimate_run(grid, preset, 1, nonzero_extent(volume.array), volume.geometry.spacing[::-1],
                            with_priors(0.1))
    assert estimate.tiles == result.tiles


# ---- the stage model: load, first-use conversion, preprocessing, passes, export -----------------------------
def _demo_grid() -> ModelGrid:
    from tilewise.resources import demo_model_dir

    return ModelGrid.of(ModelBundle.load(demo_model_dir(), fold_count=1))


def test_an_estimate_on_priors_is_a_range_of_every_stage() -> None:
    grid = _demo_grid()
    estimate = estimate_run(grid, get_preset("balanced"), 5, (160, 188, 152), (1.0, 1.0, 1.0), with_priors(0.1))
    assert estimate.is_range and estimate.total.low < estimate.seconds < estimate.total.high
    assert estimate.stages["sliding_window"] == Span.of(estimate.tiles * 5 * 0.1)  # measured: one figure
    assert estimate.stages["load"] == PRIORS.load_per_fold * 5
    mvoxels = 160 * 188 * 152 / 1e6
    assert estimate.stages["preprocess"].high == pytest.approx(PRIORS.preprocess_per_mvoxel.high * mvoxels)
    assert estimate.stages["convert"] == Span(0.0, 0.0) and estimate.conversions == 0


def test_conversion_is_counted_per_pending_fold_and_not_when_the_model_is_loaded() -> None:
    grid = _demo_grid()
    costs = with_priors(0.1)
    preset = get_preset("reference")
    none, two, five = (estimate_run(grid, preset, 5, (100, 100, 100), (2.0, 2.0, 2.0), costs, conversions=n)
                       for n in (0, 2, 5))
    assert (none.conversions, two.conversions, five.conversions) == (0, 2, 5)
    assert two.stages["convert"] == PRIORS.convert_per_fold * 2 and five.stages["convert"] == PRIORS.convert_per_fold * 5
    assert none.seconds < two.seconds < five.seconds
    loaded = estimate_run(grid, preset, 5, (100, 100, 100), (2.0, 2.0, 2.0), costs, conversions=5, loaded=True)
    assert loaded.conversions == 0 and loaded.stages["load"].high == loaded.stages["convert"].high == 0
    assert loaded.stages["sliding_window"] == five.stages["sliding_window"]


def test_learning_from_a_run_reproduces_its_stages(ct_model: Path, tmp_path: Path) -> None:
    """Costs learned from a run, applied to the same run, give back each stage's measured time: one figure."""
    case = model_factory.make_case(tmp_path / "case_0000.nii.gz", "3d", shape=(40, 48, 56))
    volume = read_volume(case)
    preset = get_preset("balanced").with_overrides(precision="fp32")
    result = Predictor(ct_model, preset, device="cpu").predict(volume)
    grid = ModelGrid.of(ModelBundle.load(ct_model))
    mvoxels = 40 * 48 * 56 / 1e6
    learned = learn_from_run(with_priors(1.0), result, 1, 0, mvoxels)
    assert learned.convert_per_fold == PRIORS.convert_per_fold  # nothing was converted: still the prior
    again = estimate_run(grid, preset, 1, volume.shape, volume.geometry.spacing[::-1], learned)
    assert not again.is_range
    for stage in ("load", "preprocess", "sliding_window", "export"):
        assert again.stages[stage].mid == pytest.approx(result.timings[stage]), stage
    # a run that converted its fold: what the load took beyond a cached fold's load is the conversion
    converted = learn_from_run(learned, result, 1, 1, mvoxels)
    expected = max(result.timings["load"] - learned.load_per_fold.mid, 0.0)
    assert converted.convert_per_fold == Span.of(expected)
    # a run that reused a loaded model teaches nothing about loading
    reused = learn_from_run(with_priors(1.0), result, 1, 0, mvoxels, loaded=True)
    assert reused.load_per_fold == PRIORS.load_per_fold


@pytest.mark.skipif(not openvino_available(), reason="needs the openvino extra")
def test_cached_folds_reads_the_cache_per_fold_and_precision(make_model, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("3d", folds=(0, 1))
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    assert cached_folds(model, ["fp32", "reduced"], device="cpu") == {"fp32": frozenset(), "reduced": frozenset()}
    Predictor(model, get_preset("fast").with_overrides(backend="openvino"), device="cpu")  # fold 0, reduced
    found = cached_folds(model, ["fp32", "reduced", "bf16"], device="cpu")
    assert found is not None and found["reduced"] == frozenset({"0"})
    import openvino
    from tilewise.engine.backends.openvino_backend import resolve_openvino_precision

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    reduced_is_fp32 = resolve_openvino_precision("reduced", capabilities, "CPU")[0] == "fp32"  # no bf16 (AVX2 CPUs)
    assert found["fp32"] == (frozenset({"0"}) if reduced_is_fp32 else frozenset())
    assert found["bf16"] == found["reduced"] or found["bf16"] == frozenset()  # the same model where bf16 is native
    assert cached_folds(model, ["reduced"], device="cpu", backend="torch") is None  # torch converts nothing
    # an entry whose manifest names another key is not counted
    (entry,) = [p for p in (tmp_path / "cache" / "openvino").iterdir() if p.is_dir() and not p.name.startswith(".")]
    (entry / "manifest.json").write_text('{"key": {}}', encoding="utf-8")
    assert cached_folds(model, ["reduced"], device="cpu") == {"reduced": frozenset()}
    assert not ModelCache(tmp_path / "nowhere").has(CacheKey("x", (1, 1, 8, 8, 8), "fp32", "0"))

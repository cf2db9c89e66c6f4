"""Presets: values from resources/presets.toml, overrides, and every preset runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tilewise.engine import Predictor, TilewiseError, get_preset, load_presets, read_volume
from tilewise.engine.runtime.devices import resolve_precision


def test_presets_in_product_order() -> None:
    assert list(load_presets())[:4] == ["reference", "balanced", "fast", "preview"]


def test_reference_is_nnunet_default() -> None:
    reference = get_preset("Reference")
    assert (reference.folds, reference.mirroring, reference.tile_step, reference.precision) == ("all", True, 0.5, "fp32")


def test_overrides_replace_fields_and_ignore_none() -> None:
    fast = get_preset("fast")
    changed = fast.with_overrides(tile_step=0.5, mirroring=None)
    assert changed.tile_step == 0.5 and changed.mirroring == fast.mirroring


@pytest.mark.parametrize("bad", [{"tile_step": 0.0}, {"tile_step": 1.5}, {"folds": 0}, {"batch_size": -1}])
def test_invalid_values_are_rejected(bad: dict) -> None:
    with pytest.raises(TilewiseError):
        get_preset("fast").with_overrides(**bad)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(TilewiseError) as caught:
        get_preset("turbo")
    assert "reference" in str(caught.value)


def test_reduced_precision_resolves_per_device() -> None:
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("reduced", torch.device("cpu")) in ("bf16", "fp32")
    assert resolve_precision("reduced", torch.device("mps")) == "fp16"


@pytest.mark.parametrize("name", ["reference", "balanced", "fast", "preview"])
def test_every_preset_runs(make_model, ct_case: Path, name: str) -> None:
    model_dir = make_model("3d", folds=(0, 1))
    preset = get_preset(name)
    predictor = Predictor(model_dir, preset, device="cpu")
    result = predictor.predict(read_volume(ct_case))
    expected_folds = 2 if preset.folds == "all" else preset.folds
    assert len(predictor.settings.folds) == expected_folds
    mirrors = 8 if preset.mirroring else 1
    assert result.forward_passes == result.tiles * mirrors * expected_folds
    assert result.labels.shape == read_volume(ct_case).shape
    assert set(result.timings) == {"load", "convert", "preprocess", "sliding_window", "export"}


def test_preset_steps_give_fewer_tiles() -> None:
    from tilewise.engine.sliding.plan import plan_tiles

    grid, patch = (84, 104, 104), (32, 40, 40)
    counts = [len(plan_tiles(grid, patch, get_preset(n).tile_step)) for n in ("reference", "fast", "preview")]
    assert counts == [5 * 5 * 5, 4 * 4 * 4, 3 * 3 * 3]

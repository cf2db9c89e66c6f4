"""Skipping tiles that lie entirely outside the body (fast and preview presets, or on request)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import model_factory
from tilewise.engine import Predictor, TileEvent, get_preset, read_volume
from tilewise.engine.preprocess.body_mask import CELL, body_mask


def _with_air_around(case: Path, target: Path, pad: tuple[int, int, int]) -> Path:
    """The case moved into the corner of a larger volume filled with air (-1000 HU), as a CT with a small body."""
    image = sitk.ReadImage(str(case))
    array = sitk.GetArrayFromImage(image)
    big = np.full(tuple(s + p for s, p in zip(array.shape, pad)), -1000, dtype=array.dtype)
    big += np.random.default_rng(1).normal(0, 12, big.shape).round().astype(array.dtype)
    big[: array.shape[0], : array.shape[1], : array.shape[2]] = array
    padded = sitk.GetImageFromArray(big)
    padded.SetSpacing(image.GetSpacing())
    padded.SetOrigin(image.GetOrigin())
    padded.SetDirection(image.GetDirection())
    sitk.WriteImage(padded, str(target))
    return target


@pytest.fixture(scope="module")
def airy_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("airy")
    case = model_factory.make_case(folder / "small_0000.nii.gz", "3d", shape=(40, 48, 56))
    return _with_air_around(case, folder / "airy_0000.nii.gz", (0, 64, 72))


def test_body_mask_marks_only_the_body() -> None:
    data = torch.full((1, 64, 64, 64), -1.0)
    data[0, 4:20, 8:24, 8:24] = 1.0 + 0.1 * torch.randn(16, 16, 16)
    data[0, 10:14, 14:18, 14:18] = -1.0  # a hole inside the body (gas) stays body
    nonzero = torch.ones(64, 64, 64, dtype=torch.bool)
    mask = body_mask(data, nonzero)
    assert mask.touches((slice(0, 32), slice(0, 32), slice(0, 32)))
    assert mask.touches((slice(10, 14), slice(14, 18), slice(14, 18)))
    assert not mask.touches((slice(32, 64), slice(32, 64), slice(32, 64)))
    assert not mask.touches((slice(0, 64), slice(40, 64), slice(0, 64)))
    # one cell of margin around the skin: a box just outside it still runs
    assert mask.touches((slice(4, 20), slice(24, 24 + CELL), slice(8, 24)))


def test_padding_and_the_nonzero_crop_count_as_empty() -> None:
    data = torch.rand((1, 32, 32, 32)) + 1
    nonzero = torch.zeros(32, 32, 32, dtype=torch.bool)
    nonzero[:16] = True
    mask = body_mask(data, nonzero)
    assert mask.touches((slice(0, 16), slice(0, 32), slice(0, 32)))
    assert not mask.touches((slice(24, 32), slice(0, 32), slice(0, 32)))


def test_fast_skips_air_tiles_and_keeps_the_labels(ct_model: Path, airy_case: Path) -> None:
    volume = read_volume(airy_case)
    fast = get_preset("fast").with_overrides(precision="fp32", tile_step=0.5)
    assert fast.skip_empty_tiles
    events: list[TileEvent] = []
    skipped = Predictor(ct_model, fast, device="cpu").predict(volume, on_event=events.append,
                                                              provisional_labels=True)
    full = Predictor(ct_model, fast.with_overrides(skip_empty_tiles=False), device="cpu").predict(volume)
    assert skipped.tiles_skipped > 0 and full.tiles_skipped == 0
    assert skipped.tiles + skipped.tiles_skipped == full.tiles
    assert len(events) == skipped.tiles and events[-1].total == skipped.tiles
    assert skipped.forward_passes == skipped.tiles
    body = (slice(None), slice(0, 48), slice(0, 56))  # where the original case lies; the rest is air
    assert (skipped.labels[body] == full.labels[body]).mean() >= 0.999
    for label in (1, 2):
        a, b = skipped.labels[body] == label, full.labels[body] == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99
    # far from the body the air reads as background (this untrained test model predicts labels in air when asked)
    assert (skipped.labels[:, 80:, 100:] == 0).all()
    assert (full.labels[:, 80:, 100:] != 0).any()


def test_region_models_read_skipped_tiles_as_background(make_model, tmp_path: Path) -> None:
    model = make_model("regions")
    case = model_factory.make_case(tmp_path / "small_0000.nii.gz", "regions", shape=(40, 48, 56))
    airy = _with_air_around(case, tmp_path / "airy_0000.nii.gz", (0, 64, 72))
    volume = read_volume(airy)
    preset = get_preset("preview").with_overrides(precision="fp32")
    skipped = Predictor(model, preset, device="cpu").predict(volume, with_probabilities=True)
    full = Predictor(model, preset.with_overrides(skip_empty_tiles=False), device="cpu").predict(volume)
    assert skipped.tiles_skipped > 0
    body = (slice(None), slice(0, 48), slice(0, 56))
    assert (skipped.labels[body] == full.labels[body]).mean() >= 0.999
    assert (skipped.labels[:, 80:, 100:] == 0).all()
    assert skipped.probabilities is not None and np.isfinite(skipped.probabilities).all()


def test_reference_never_skips(ct_model: Path, airy_case: Path) -> None:
    assert not get_preset("reference").skip_empty_tiles and not get_preset("balanced").skip_empty_tiles
    preset = get_preset("reference").with_overrides(mirroring=False, folds=1)
    result = Predictor(ct_model, preset, device="cpu").predict(read_volume(airy_case))
    assert result.tiles_skipped == 0

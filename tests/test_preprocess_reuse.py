"""Reusing the last preprocessed input (engine): a preset change reuses it with the same labels (also in nnU-Net-exact
mode); another image or another model does not; one entry at most."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tilewise.engine import Cancelled, Predictor, Volume, get_preset, read_volume
from tilewise.engine.model.bundle import resolve_model_dir
from tilewise.engine.preprocess.pipeline import preprocess
from tilewise.engine.preprocess.reuse import PreprocessCache, image_digest
from tilewise.resources import sample_path


@pytest.fixture(scope="module")
def sample() -> Volume:
    return read_volume(sample_path())


def _predictor(preset: str, model: Path | None = None, nnunet_exact: bool = False) -> Predictor:
    """fold 0 of the demo model (or ``model``) on the CPU with PyTorch: runs of a second or two."""
    return Predictor(model or resolve_model_dir("demo"), get_preset(preset).with_overrides(backend="torch"),
                     device="cpu", folds=["0"], nnunet_exact=nnunet_exact)


def _copy(volume: Volume) -> Volume:
    return Volume(array=volume.array.copy(), geometry=volume.geometry, sources=volume.sources)


def test_a_preset_change_reuses_the_preprocessed_image_and_the_labels_are_the_same(sample: Volume) -> None:
    cache = PreprocessCache()
    balanced, fast = _predictor("balanced"), _predictor("fast")
    assert not balanced.settings.skip_empty_tiles and fast.settings.skip_empty_tiles

    first = balanced.predict(sample, reuse=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    reused = fast.predict(_copy(sample), reuse=cache)  # another preset, the same image (another array object)
    assert (cache.hits, cache.misses) == (1, 1), "the preset change reused the preprocessed image"

    fresh_fast = fast.predict(sample)  # no cache: preprocessed again, with only what fast needs
    assert np.array_equal(reused.labels, fresh_fast.labels)
    assert reused.tiles_skipped == fresh_fast.tiles_skipped and reused.tiles == fresh_fast.tiles
    again = balanced.predict(sample, reuse=cache)
    assert cache.hits == 2
    assert np.array_equal(again.labels, first.labels), "a reused entry is not changed by the runs that used it"
    assert np.array_equal(first.labels, balanced.predict(sample).labels)


def test_another_image_or_another_model_is_preprocessed_again(sample: Volume, tmp_path: Path) -> None:
    cache = PreprocessCache()
    fast = _predictor("fast")
    fast.predict(sample, reuse=cache)

    edited = _copy(sample)
    edited.array[0, 90, 100, 90] += 50.0  # one voxel changed in place
    assert image_digest(edited) != image_digest(sample)
    fast.predict(edited, reuse=cache)
    assert (cache.hits, cache.misses) == (0, 2), "an image with one other voxel is not the same image"

    model = tmp_path / "finer"  # the demo model planned at a finer spacing: another network grid
    shutil.copytree(resolve_model_dir("demo"), model, ignore=shutil.ignore_patterns("fold_[1-9]"))
    plans = json.loads((model / "plans.json").read_text(encoding="utf-8"))
    configuration = plans["configurations"]["3d_fullres"]
    configuration["spacing"] = [s * 0.8 for s in configuration["spacing"]]
    (model / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    finer = _predictor("fast", model)
    result = finer.predict(edited, reuse=cache)
    assert (cache.hits, cache.misses) == (0, 3), "another model's preprocessing is not reused"
    expected = preprocess(edited, finer.bundle, with_nonzero_mask=False).data.shape
    assert expected != preprocess(edited, fast.bundle, with_nonzero_mask=False).data.shape
    assert result.labels.shape == sample.shape


def test_one_entry_at_most_and_a_cancelled_preparation_leaves_none(sample: Volume) -> None:
    cache = PreprocessCache()
    fast = _predictor("fast")
    other = _copy(sample)
    other.array *= 1.5
    fast.predict(sample, reuse=cache)
    fast.predict(other, reuse=cache)
    fast.predict(sample, reuse=cache)
    assert (cache.hits, cache.misses) == (0, 3), "only the last image is kept"

    def cancelled() -> None:
        raise Cancelled()

    key = object()
    with pytest.raises(Cancelled):
        cache.get_or_prepare(key, cancelled)  # type: ignore[arg-type]
    fast.predict(sample, reuse=cache)
    assert cache.misses == 5, "a cancelled preparation left nothing behind, and dropped the previous entry"


def test_exact_mode_reuses_nnunets_own_preprocessing_and_only_its_own(sample: Volume,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import (
        DefaultPreprocessor,
    )

    runs: list[int] = []  # nnU-Net's preprocessor class (exact mode's preprocessing), counted
    original = DefaultPreprocessor.run_case_npy
    monkeypatch.setattr(DefaultPreprocessor, "run_case_npy",
                        lambda self, *args, **kwargs: runs.append(1) or original(self, *args, **kwargs))
    cache = PreprocessCache()
    preview, fast = _predictor("preview", nnunet_exact=True), _predictor("fast", nnunet_exact=True)
    assert preview.settings.tile_step != fast.settings.tile_step

    preview.predict(sample, reuse=cache)
    reused = fast.predict(_copy(sample), reuse=cache)
    assert len(runs) == 1 and (cache.hits, cache.misses) == (1, 1), "the preset change did not preprocess again"
    fresh = fast.predict(sample)
    assert len(runs) == 2
    assert np.array_equal(reused.labels, fresh.labels) and reused.tiles == fresh.tiles

    _predictor("fast").predict(sample, reuse=cache)  # Tilewise's own preprocessing: another entry
    assert (cache.hits, cache.misses) == (1, 2) and len(runs) == 2
    fast.predict(sample, reuse=cache)
    assert (cache.hits, cache.misses) == (1, 3), "exact mode never takes the parallel preprocessing's entry"

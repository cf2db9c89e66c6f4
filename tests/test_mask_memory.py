"""nnU-Net's nonzero mask, made in bounded memory: holes filled as scipy fills them and the mask resampled to the
network grid exactly as nnU-Net's ``resampling_fn_seg`` resamples it (bit for bit), without its float64 copies.

The reference is always nnU-Net's own function on the same int8 mask (0 inside, -1 outside). The masks are made to
hit the hard cases: exact ties between the two labels (blocks of two voxels sampled half way), labels that meet
at window edges (one-voxel windows), single-label masks, and the separate-z paths of anisotropic plans.
"""
from __future__ import annotations

import copy
import dataclasses
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
from preprocess_child import run_child
from scipy.ndimage import binary_fill_holes, gaussian_filter
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.preprocess import nonzero_mask
from tilewise.engine.preprocess.default_preprocessor import run_default_preprocessing
from tilewise.engine.preprocess.nonzero_mask import as_labels, fill_holes, resample_mask, seg_resampling


def _mask(shape: tuple[int, int, int], pattern: str, seed: int = 0) -> np.ndarray:
    """A boolean mask: 'blocks' (2-voxel blocks: exact ties when halved or doubled), 'blobs' (smooth regions),
    'noise' (independent voxels), 'full' (one label), 'empty' (the other one)."""
    rng = np.random.default_rng(seed)
    if pattern == "blocks":
        coarse = rng.random(tuple(-(-s // 2) for s in shape)) > 0.5
        return np.kron(coarse, np.ones((2, 2, 2), dtype=bool))[tuple(slice(0, s) for s in shape)]
    if pattern == "blobs":
        return gaussian_filter(rng.standard_normal(shape), 1.5) > 0
    if pattern == "noise":
        return rng.random(shape) > 0.5
    return np.full(shape, pattern == "full")


def _with_plans(bundle: ModelBundle, **changes) -> ModelBundle:
    """The same model with entries of its configuration in plans.json changed (a fresh bundle)."""
    plans = copy.deepcopy(bundle.plans)
    plans["configurations"][bundle.configuration_name].update(changes)
    return dataclasses.replace(bundle, plans=plans)


def _seg_kwargs(order: int, order_z: int, force_separate_z: bool | None) -> dict:
    return {"resampling_fn_seg_kwargs": {"is_seg": True, "order": order, "order_z": order_z,
                                         "force_separate_z": force_separate_z}}


def _assert_like_nnunet(filled: np.ndarray, spacing: list[float], bundle: ModelBundle, threads: int = 2) -> None:
    manager = bundle.configuration_manager
    target = list(manager.spacing)
    if len(target) < 3:
        target = [spacing[0], *target]
    new_shape = compute_new_shape(filled.shape, spacing, target)
    want = manager.resampling_fn_seg(as_labels(filled)[None], new_shape, spacing, target).astype(np.int8)
    got = resample_mask(filled.copy(), new_shape, spacing, target, manager, threads)
    assert got.dtype == np.int8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def ct_bundle(ct_model) -> ModelBundle:
    return ModelBundle.load(ct_model)


@pytest.mark.parametrize("pattern", ["blocks", "blobs", "noise", "full", "empty"])
@pytest.mark.parametrize("shape, spacing", [
    ((22, 30, 26), [3.0, 2.0, 2.0]),     # upsample by exactly 2 in-plane: ties at every boundary
    ((40, 52, 48), [0.75, 0.5, 0.5]),    # downsample by exactly 2: ties again
    ((23, 37, 29), [1.1, 0.7, 1.3]),     # uneven factors, up and down
    ((9, 40, 44), [5.0, 1.0, 1.0]),      # anisotropic input: in-plane per slice, nearest along z
    ((30, 34, 38), [1.5, 0.4, 0.4]),     # anisotropic target
])
def test_mask_equals_nnunets_on_the_test_model(ct_bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch, pattern: str,
                                               shape, spacing) -> None:
    filled = _mask(shape, pattern)
    _assert_like_nnunet(filled, spacing, ct_bundle)
    monkeypatch.setattr(nonzero_mask, "WINDOW_VOXELS", 1)  # one output row (or slice) per window
    _assert_like_nnunet(filled, spacing, ct_bundle, threads=3)


@pytest.mark.parametrize("order, order_z, force_separate_z, spacing", [
    (0, 0, None, [1.1, 0.7, 1.3]),       # nearest neighbour for the whole volume
    (1, 1, True, [2.2, 1.3, 0.8]),       # linear along z: a > 0.5 rule per label
    (0, 1, True, [2.2, 0.5, 0.5]),
    (1, 0, True, [0.7, 1.0, 3.1]),       # the coarse axis is the last one
    (1, 0, True, [0.9, 2.9, 0.9]),       # ... the middle one
    (1, 0, False, [5.0, 1.0, 1.0]),      # anisotropic, but the plans say no separate z
    (3, 0, False, [1.1, 0.7, 1.3]),      # a spline order that needs the whole volume: nnU-Net's own call
    (1, 3, True, [2.2, 1.3, 0.8]),       # ... the same along z
])
@pytest.mark.parametrize("pattern", ["blocks", "blobs"])
def test_mask_equals_nnunets_with_other_plans(ct_bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch, order: int,
                                              order_z: int, force_separate_z: bool | None, spacing, pattern) -> None:
    bundle = _with_plans(ct_bundle, **_seg_kwargs(order, order_z, force_separate_z))
    filled = _mask((19, 26, 23), pattern, seed=order + 3 * order_z)
    _assert_like_nnunet(filled, spacing, bundle)
    monkeypatch.setattr(nonzero_mask, "WINDOW_VOXELS", 1)
    _assert_like_nnunet(filled, spacing, bundle, threads=3)


def test_only_plans_it_reproduces_are_taken_apart() -> None:
    kwargs = _seg_kwargs(1, 0, None)
    assert seg_resampling({"resampling_fn_seg": "resample_data_or_seg_to_shape", **kwargs}) is not None
    assert seg_resampling({"resampling_fn_seg": "resample_torch_fornnunet", **kwargs}) is None
    unknown = {"resampling_fn_seg": "resample_data_or_seg_to_shape",
               "resampling_fn_seg_kwargs": {**kwargs["resampling_fn_seg_kwargs"], "some_new_option": 1}}
    assert seg_resampling(unknown) is None
    as_data = {"resampling_fn_seg": "resample_data_or_seg_to_shape",
               "resampling_fn_seg_kwargs": {**kwargs["resampling_fn_seg_kwargs"], "is_seg": False}}
    assert seg_resampling(as_data) is None


def _blocky_image(shape: tuple[int, ...], channels: int, seed: int) -> np.ndarray:
    """An image whose zeros form 2-voxel blocks and a hole: its mask has ties and a hole to fill."""
    rng = np.random.default_rng(seed)
    image = (200 + 50 * rng.standard_normal((channels, *shape))).astype(np.float32)
    image[:, ~_mask(shape, "blocks", seed)] = 0
    centre = tuple(s // 2 for s in shape)
    image[(slice(None), *(slice(c - 2, c + 2) for c in centre))] = 0
    return image


@pytest.mark.parametrize("kind, spacing", [("3d", [3.0, 2.0, 2.0]), ("2d", [1.5, 0.5, 2.0]),
                                           ("aniso", [3.0, 0.6, 0.6]), ("transposed", [1.0, 1.0, 2.0]),
                                           ("two_channel", [1.2, 0.8, 1.1])])
def test_preprocessing_gives_nnunets_mask_on_other_model_kinds(make_model, kind: str, spacing) -> None:
    bundle = ModelBundle.load(make_model(kind))
    image = _blocky_image((18, 36, 30), bundle.num_input_channels, seed=5)
    manager = bundle.configuration_manager
    with redirect_stdout(io.StringIO()):
        _, want, _ = manager.preprocessor_class(verbose=False).run_case_npy(
            image.copy(), None, {"spacing": list(spacing)}, bundle.plans_manager, manager, bundle.dataset_json)
    _, seg, _ = run_default_preprocessing(image.copy(), {"spacing": list(spacing)}, bundle, with_mask=True, threads=2)
    assert seg is not None and seg.dtype == want.dtype
    np.testing.assert_array_equal(seg, want)
    assert (seg == -1).any() and (seg == 0).any()


@pytest.mark.parametrize("pattern", ["blobs", "noise", "full", "empty"])
def test_holes_are_filled_as_scipy_fills_them(pattern: str) -> None:
    nonzero = _mask((21, 33, 27), pattern, seed=7)
    nonzero[8:13, 10:20, 9:18] = True
    nonzero[10, 14, 12] = False                      # a hole in 3-D (not in any 2-D slice's border)
    want = binary_fill_holes(nonzero)
    assert np.array_equal(fill_holes(nonzero.copy()), want)
    wider = np.zeros((25, 33, 31), dtype=bool)       # a view into a larger array, as the crop gives
    wider[2:23, :, 4:] = nonzero
    assert np.array_equal(fill_holes(wider[2:23, :, 4:]), want)


_CHILD = r'''
small = rng.normal(0, 100, (1, 20, 64, 64)).astype(np.float32)
small[:, :, :8] = 0
run_default_preprocessing(small, {"spacing": spacing}, bundle, with_mask=True, threads=2)  # loads what it imports
# a CT-like volume: a body of soft tissue with air inside, zeros outside it and in two thin slabs at its ends
image = np.zeros((1, 200, 512, 512), dtype=np.float32)
y, x = np.ogrid[:512, :512]
body = (y - 256) ** 2 / 200 ** 2 + (x - 256) ** 2 / 230 ** 2 < 1
image[0][:, body] = rng.integers(-100, 300, (200, int(body.sum())), dtype=np.int16)
image[0, :, 200:260, 200:300] = -1000
image[0, 60:64, 240:250, 240:250] = 0
(data, seg, props), extra = measured(lambda: run_default_preprocessing(image, {"spacing": spacing}, bundle,
                                                                       with_mask=True, threads=2))
cropped = int(np.prod(props["shape_after_cropping_and_before_resampling"]))
print(json.dumps({"input": image.nbytes, "extra": extra, "mask_float64": 8 * cropped,
                  "shape": list(data.shape), "labels": sorted(int(v) for v in np.unique(seg))}))
'''


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable high-water mark")
def test_preprocessing_with_the_mask_holds_no_float64_copy_of_it(ct_model: Path) -> None:
    measured = run_child(_CHILD, ct_model, timeout=600)
    assert measured["shape"][:2] == [1, 100]
    assert measured["labels"] == [-1, 0]  # both labels: the resampling decides between them (not a constant)
    # nnU-Net's mask resampling alone holds float64 copies of the mask (8 bytes a voxel, twice the float32 input);
    # here the boolean mask and its filled copy (2 bytes a voxel), the image's windows and the output stay below
    # one float32 copy of the input
    assert measured["extra"] < measured["input"], measured

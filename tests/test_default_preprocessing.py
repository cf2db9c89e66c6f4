"""Tilewise's parallel DefaultPreprocessor gives nnU-Net's numbers: data, crop box, shapes and nonzero mask."""
from __future__ import annotations

import copy
import dataclasses
import io
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from skimage.transform import resize

from tilewise.engine.preprocess import default_preprocessor as default_preprocessing
from tilewise.engine.errors import InputError
from tilewise.engine.data.readers import read_volume
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.preprocess.pipeline import preprocess
from tilewise.engine.preprocess.spline_resize import resize_like_skimage


def _nnunet(image: np.ndarray, spacing: list[float], bundle: ModelBundle):
    manager = bundle.configuration_manager
    properties = {"spacing": list(spacing)}
    with redirect_stdout(io.StringIO()):
        return manager.preprocessor_class(verbose=False).run_case_npy(
            image.copy(), None, properties, bundle.plans_manager, manager, bundle.dataset_json)


def _ours(image: np.ndarray, spacing: list[float], bundle: ModelBundle, threads: int = 2):
    return default_preprocessing.run_default_preprocessing(image.copy(), {"spacing": list(spacing)}, bundle,
                                                           with_mask=True, threads=threads)


def _assert_same(image: np.ndarray, spacing: list[float], bundle: ModelBundle) -> None:
    assert default_preprocessing.supports(bundle)
    want_data, want_seg, want_props = _nnunet(image, spacing, bundle)
    data, seg, props = _ours(image, spacing, bundle)
    assert data.dtype == want_data.dtype == np.float32
    assert data.shape == want_data.shape
    # the same up to a float32 rounding step of the largest value (spline_resize's coordinates differ by ~1e-15)
    ulp = float(np.spacing(np.float32(max(1.0, float(np.abs(want_data).max())))))
    np.testing.assert_allclose(data, want_data, rtol=0, atol=2 * ulp)
    np.testing.assert_array_equal(seg, want_seg)
    assert seg.dtype == want_seg.dtype
    for key in ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"):
        assert repr(props[key]) == repr(want_props[key]), key


def _with_plans(bundle: ModelBundle, **changes) -> ModelBundle:
    """The same model with entries of its configuration in plans.json changed (a fresh bundle, no cached managers)."""
    plans = copy.deepcopy(bundle.plans)
    configuration = plans["configurations"][bundle.configuration_name]
    for key, value in changes.items():
        if key == "transpose":
            plans["transpose_forward"], plans["transpose_backward"] = value, [int(i) for i in np.argsort(value)]
        else:
            configuration[key] = value
    return dataclasses.replace(bundle, plans=plans)


def _image(shape: tuple[int, int, int], channels: int = 1, seed: int = 0, zero_margin: int = 3,
           hole: bool = True) -> np.ndarray:
    """A smooth random image with exact zeros around it and, optionally, a zero hole inside (channels, z, y, x)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((channels, *shape), dtype=np.float32)
    inner = tuple(slice(zero_margin, s - zero_margin) for s in shape)
    for c in range(channels):
        noise = rng.standard_normal(tuple(s - 2 * zero_margin for s in shape)).astype(np.float32)
        image[(c, *inner)] = 200 + 50 * noise
    if hole:
        centre = tuple(s // 2 for s in shape)
        image[(slice(None), *(slice(c - 2, c + 2) for c in centre))] = 0
    return image


@pytest.fixture(scope="module")
def ct_bundle(ct_model) -> ModelBundle:
    return ModelBundle.load(ct_model)


@pytest.mark.parametrize("shape, spacing", [
    ((30, 34, 38), [1.5, 1.0, 1.0]),     # the test model's own spacing: nothing to resample
    ((22, 30, 26), [3.0, 2.1, 1.7]),     # upsample
    ((40, 52, 48), [0.9, 0.6, 0.55]),    # downsample
    ((9, 40, 44), [5.0, 1.0, 1.0]),      # anisotropic input: in-plane per slice, nearest along z
    ((30, 34, 38), [1.5, 0.45, 0.45]),   # anisotropic target
])
def test_matches_nnunet_on_the_test_model(ct_bundle: ModelBundle, shape, spacing) -> None:
    _assert_same(_image(shape), spacing, ct_bundle)


@pytest.mark.parametrize("changes", [
    {"use_mask_for_norm": [True]},
    {"normalization_schemes": ["CTNormalization"]},
    {"resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}},
    {"resampling_fn_data_kwargs": {"is_seg": False, "order": 5, "order_z": 0, "force_separate_z": None}},
    {"resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 1, "force_separate_z": True}},
    {"resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 3, "force_separate_z": True}},
    {"resampling_fn_data_kwargs": {"is_seg": False, "order": 0, "order_z": 0, "force_separate_z": None}},
    {"resampling_fn_data_kwargs": {"is_seg": False, "order": 0, "order_z": 0, "force_separate_z": True}},
    {"transpose": [2, 0, 1]},
])
def test_matches_nnunet_with_other_plans(ct_bundle: ModelBundle, changes) -> None:
    bundle = _with_plans(ct_bundle, **changes)
    _assert_same(_image((21, 27, 33), seed=3), [2.2, 1.3, 0.8], bundle)


@pytest.mark.parametrize("kind, spacing", [("2d", [1.5, 0.7, 1.3]), ("two_channel", [1.2, 0.8, 1.1]),
                                           ("aniso", [3.0, 0.6, 0.6]), ("transposed", [1.0, 1.0, 2.0])])
def test_matches_nnunet_on_other_model_kinds(make_model, kind: str, spacing) -> None:
    bundle = ModelBundle.load(make_model(kind))
    _assert_same(_image((18, 36, 30), channels=bundle.num_input_channels, seed=5), spacing, bundle)


def test_matches_nnunet_on_edge_cases(ct_bundle: ModelBundle) -> None:
    _assert_same(np.zeros((1, 12, 14, 16), np.float32), [2.0, 1.3, 1.3], ct_bundle)           # nothing nonzero
    _assert_same(_image((12, 14, 16), zero_margin=0, hole=False), [2.0, 1.3, 1.3], ct_bundle)  # no zero border
    one_slice = _image((3, 20, 22), zero_margin=0, hole=False)
    one_slice[:, [0, 2]] = 0
    _assert_same(one_slice, [2.0, 0.9, 0.9], ct_bundle)                                        # crop to one slice


def test_a_region_thinner_than_one_model_voxel_is_a_clear_error(ct_bundle: ModelBundle) -> None:
    image = np.zeros((1, 8, 9, 10), np.float32)
    image[0, 4, 4, 4] = 100  # one voxel of 0.5 mm in-plane: less than one voxel at the model's 1 mm
    with pytest.raises(InputError, match=r"tiny\.nii\.gz: its nonzero region \(1 x 1 x 1 voxels\) is less than one"):
        default_preprocessing.run_default_preprocessing(image, {"spacing": [3.0, 0.5, 0.5]}, ct_bundle,
                                                        with_mask=False, threads=2, source="tiny.nii.gz")


def test_mask_is_only_computed_when_asked(ct_bundle: ModelBundle) -> None:
    image = _image((20, 24, 28))
    _, seg, _ = default_preprocessing.run_default_preprocessing(image, {"spacing": [2.0, 1.2, 1.2]}, ct_bundle,
                                                                with_mask=False, threads=2)
    assert seg is None


def test_other_preprocessors_and_resampling_use_nnunets_code(ct_bundle: ModelBundle, ct_case) -> None:
    assert not default_preprocessing.supports(_with_plans(ct_bundle, preprocessor_name="SomeOtherPreprocessor"))
    torch_resampling = _with_plans(ct_bundle, resampling_fn_data="resample_torch_fornnunet",
                                   resampling_fn_data_kwargs={"is_seg": False, "force_separate_z": None,
                                                              "memefficient_seg_resampling": False})
    assert not default_preprocessing.supports(torch_resampling)
    volume = read_volume(ct_case)
    fast = preprocess(volume, ct_bundle)
    assert fast.nonzero is not None
    ours_via_nnunet = preprocess(volume, torch_resampling)       # nnU-Net's own preprocessor and torch resampling
    assert ours_via_nnunet.data.shape == fast.data.shape
    assert torch.equal(ours_via_nnunet.nonzero, fast.nonzero)


def test_preprocess_leaves_out_the_mask_unless_asked(ct_bundle: ModelBundle, ct_case) -> None:
    volume = read_volume(ct_case)
    assert preprocess(volume, ct_bundle, with_nonzero_mask=False).nonzero is None
    with_mask = preprocess(volume, ct_bundle, with_nonzero_mask=True)
    want_data, want_seg, _ = _nnunet(volume.array, volume.nnunet_spacing, ct_bundle)
    inside = with_mask.unpadded
    np.testing.assert_allclose(with_mask.data[(0, *inside)].numpy(), want_data[0], atol=1e-5 * np.abs(want_data).max())
    np.testing.assert_array_equal(with_mask.nonzero[inside].numpy(), want_seg[0] >= 0)


@pytest.mark.parametrize("order", [1, 3, 5])
@pytest.mark.parametrize("shape, new_shape", [((17, 23, 29), (9, 40, 29)), ((4, 5, 6), (13, 2, 6)),
                                              ((1, 12, 12), (1, 5, 20))])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_spline_resize_matches_skimage(order: int, shape, new_shape, threads: int, dtype) -> None:
    rng = np.random.default_rng(order)
    image = (rng.standard_normal(shape) * 100).astype(dtype)
    want = resize(image.astype(np.float64), new_shape, order, mode="edge", anti_aliasing=False)  # as nnU-Net calls it
    got = resize_like_skimage(image, new_shape, order, threads)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_spline_resize_refuses_what_it_cannot_match() -> None:
    with pytest.raises(ValueError, match="order"):
        resize_like_skimage(np.zeros((3, 3, 3)), (2, 2, 2), 0, 1)
    with pytest.raises(ValueError, match="3-D"):
        resize_like_skimage(np.zeros((3, 3)), (2, 2), 3, 1)

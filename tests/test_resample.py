"""Our torch resampling of logits equals nnU-Net's numpy/scipy export resampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

from tilewise.engine.postprocess.resample import resample_logits

CASES = [
    pytest.param((20, 24, 28), (31, 17, 40), (1.0, 1.0, 1.0), (0.7, 1.5, 0.8), None, id="isotropic-up-and-down"),
    pytest.param((8, 30, 30), (29, 41, 37), (4.0, 1.0, 1.0), (1.1, 0.8, 0.8), None, id="separate-z-coarse-input"),
    pytest.param((30, 20, 25), (30, 31, 11), (1.0, 1.0, 1.0), (1.0, 0.6, 2.2), None, id="one-axis-unchanged"),
    pytest.param((12, 22, 26), (40, 22, 26), (3.5, 1.0, 1.0), (1.0, 1.0, 1.0), True, id="forced-separate-z-only-z"),
]


@pytest.mark.parametrize(("shape", "new_shape", "spacing", "new_spacing", "force"), CASES)
@pytest.mark.parametrize("order_z", [0, 1])
def test_matches_nnunet(shape, new_shape, spacing, new_spacing, force, order_z) -> None:
    generator = np.random.default_rng(0)
    logits = generator.normal(size=(3, *shape)).astype(np.float32)
    expected = resample_data_or_seg_to_shape(logits, new_shape, spacing, new_spacing, is_seg=False, order=1,
                                             order_z=order_z, force_separate_z=force)
    ours = resample_logits(torch.from_numpy(logits), new_shape, spacing, new_spacing, order=1, order_z=order_z,
                           force_separate_z=force).numpy()
    assert ours.shape == expected.shape == (3, *new_shape)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_same_shape_is_returned_unchanged() -> None:
    logits = torch.randn(2, 5, 6, 7)
    assert resample_logits(logits, (5, 6, 7), (1, 1, 1), (2, 2, 2)) is logits


@pytest.mark.parametrize(("shape", "new_shape", "spacing", "new_spacing", "force"), CASES)
def test_slabs_equal_the_whole_resampling_and_reuse_one_output_block(shape, new_shape, spacing, new_spacing,
                                                                    force) -> None:
    """Slab by slab (one output row at a time, as the streaming export asks) the values are those of one whole
    resampling, to the last bit, and slabs of one shape are written into the same memory."""
    from tilewise.engine.postprocess.resample import LogitResampler

    logits = torch.from_numpy(np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32))
    whole = resample_logits(logits, new_shape, spacing, new_spacing, force_separate_z=force)
    resampler = LogitResampler(shape, new_shape, spacing, new_spacing, force_separate_z=force)
    addresses = set()
    for row in range(new_shape[0]):
        low, high = resampler.input_rows(row, row + 1)
        slab = resampler.slab(logits[:, low:high], row, row + 1, low)
        assert torch.equal(slab, whole[:, row:row + 1]), f"row {row}"
        addresses.add(slab.data_ptr())
    bilinear_in_plane = new_shape[1:] != shape[1:] and resampler.orders[1:] == (1, 1)
    if bilinear_in_plane:  # (elsewhere each axis is resampled on its own, into fresh memory)
        assert len(addresses) == 1


WINDOW_CASES = [*CASES, pytest.param((6, 43, 67), (6, 48, 56), (1.5, 1.0, 1.0), (1.5, 0.9, 1.2), None,
                                     id="up-in-y-down-in-x")]


@pytest.mark.parametrize(("shape", "new_shape", "spacing", "new_spacing", "force"), WINDOW_CASES)
@pytest.mark.parametrize("order_z", [0, 1])
def test_a_window_of_rows_lies_within_the_error_bound_of_nnunets_own_values(shape, new_shape, spacing, new_spacing,
                                                                          force, order_z) -> None:
    """The streaming export's windows (a part of each plane, for the last rows while their tiles still run) are
    nnunetv2's values within :meth:`error_bound`, channels innermost, whatever part of the plane they are (a window
    ending at the last row or column, mirrored along it)."""
    from tilewise.engine.postprocess.resample import LogitResampler
    from tilewise.engine.postprocess.resample_window import WindowResampler

    logits = torch.from_numpy(np.random.default_rng(2).normal(size=(3, *shape)).astype(np.float32) * 20)
    expected = torch.from_numpy(resample_data_or_seg_to_shape(logits.numpy(), new_shape, spacing, new_spacing,
                                                              is_seg=False, order=1, order_z=order_z,
                                                              force_separate_z=force))
    resampler = LogitResampler(shape, new_shape, spacing, new_spacing, order_z=order_z, force_separate_z=force)
    windows = WindowResampler(resampler)
    bound = resampler.error_bound(float(logits.abs().max()))
    height, width = new_shape[1:]
    spans = [((0, height), (0, width)), ((height // 3, height), (width // 2, width)),
             ((1, height // 2), (2, width - 3)), ((0, height // 2), (width // 3, width)),
             ((height // 4, height // 2), (0, width)),
             ((0, 3), (0, 11)), ((0, 3), (width // 2, width))]  # as many input rows as output rows: not a copy
    for ys, xs in spans:
        for row in (0, new_shape[0] // 2, new_shape[0] - 2):
            low, high = resampler.input_rows(row, row + 2)
            values = windows.slab(logits[:, low:high], row, row + 2, low, ys, xs)
            assert values.stride(0) == 1 and tuple(values.shape) == (3, 2, ys[1] - ys[0], xs[1] - xs[0])
            mirrored = [axis for axis, mirror in zip((2, 3), windows.mirrored(ys, xs)) if mirror]
            if mirrored:  # a window ending at the last row or column comes mirrored along that axis
                values = values.flip(mirrored)
            exact = expected[:, row:row + 2, ys[0]:ys[1], xs[0]:xs[1]]
            assert float((values - exact).abs().max()) <= bound, (ys, xs, row)

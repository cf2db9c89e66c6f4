"""The preprocessing of a long CT holds no full-size copy of it: its peak memory (the process's resident high-water
mark, measured in a fresh process) stays below one float32 copy of the input.

nnU-Net's way (a float32 copy to normalise, the whole image as padded float64 spline coefficients) needs about three
times the input on top of it; Tilewise normalises block by block and makes the coefficients window by window.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from preprocess_child import run_child
from tilewise.engine.preprocess import spline_resize

_CHILD = r'''
small = rng.normal(0, 100, (1, 20, 64, 64)).astype(np.float32)
run_default_preprocessing(small, {"spacing": spacing}, bundle, with_mask=False, threads=2)  # loads what it imports
image = np.full((1, 200, 512, 512), -1000, dtype=np.float32)
image[0, :, 100:412, 80:432] = rng.integers(-200, 300, (200, 312, 352), dtype=np.int16)
(data, _, _), extra = measured(lambda: run_default_preprocessing(image, {"spacing": spacing}, bundle, with_mask=False,
                                                                 threads=2))
print(json.dumps({"input": image.nbytes, "extra": extra, "shape": list(data.shape)}))
'''


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable high-water mark")
def test_preprocessing_a_long_ct_holds_no_full_size_copy(ct_model: Path) -> None:
    measured = run_child(_CHILD, ct_model, timeout=300)
    assert measured["shape"] == [1, 100, 133, 133]
    # the output, a window of coefficients (64 MB at most here) and the blocks being read: under one float32 copy
    assert measured["extra"] < measured["input"], measured


@pytest.mark.parametrize("order", [1, 3])
def test_coefficients_made_window_by_window_give_the_same_bits(monkeypatch: pytest.MonkeyPatch, order: int) -> None:
    image = np.random.default_rng(order).normal(size=(90, 70, 60)).astype(np.float32)
    monkeypatch.setattr(spline_resize, "WINDOW_BYTES", 2**40)
    whole = spline_resize.resize_like_skimage(image, (40, 30, 50), order, 2)
    monkeypatch.setattr(spline_resize, "WINDOW_BYTES", 1)  # one output slab a window, rows handed back between
    windowed = spline_resize.resize_like_skimage(image, (40, 30, 50), order, 2)
    np.testing.assert_array_equal(windowed, whole)

"""The preprocessing of a long CT holds no full-size copy of it: its peak memory (the process's resident high-water
mark, measured in a fresh process) stays below one float32 copy of the input.

nnU-Net's way (a float32 copy to normalise, the whole image as padded float64 spline coefficients) needs about three
times the input on top of it; Tilewise normalises block by block and makes the coefficients window by window.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tilewise.engine.preprocess import spline_resize

_CHILD = r'''
import dataclasses, copy, json, sys
import numpy as np
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.preprocess import spline_resize
from tilewise.engine.preprocess.default_preprocessor import run_default_preprocessing

spline_resize.WINDOW_BYTES = 64 * 2**20  # smaller than this image's coefficients, as the default is on a long CT

def kib(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key + ":")) * 1024

bundle = ModelBundle.load(sys.argv[1])
plans = copy.deepcopy(bundle.plans)
configuration = plans["configurations"][bundle.configuration_name]
configuration.update(normalization_schemes=["CTNormalization"], use_mask_for_norm=[False], spacing=[3.0, 3.0, 3.0],
                     resampling_fn_data_kwargs={"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None})
plans["transpose_forward"], plans["transpose_backward"] = [0, 1, 2], [0, 1, 2]
plans["foreground_intensity_properties_per_channel"] = {"0": {"mean": 50.0, "std": 120.0, "percentile_00_5": -900.0,
                                                               "percentile_99_5": 1200.0}}
bundle = dataclasses.replace(bundle, plans=plans)
spacing = [1.5, 0.78, 0.78]
rng = np.random.default_rng(0)
small = rng.normal(0, 100, (1, 20, 64, 64)).astype(np.float32)
run_default_preprocessing(small, {"spacing": spacing}, bundle, with_mask=False, threads=2)  # loads what it imports
image = np.full((1, 200, 512, 512), -1000, dtype=np.float32)
image[0, :, 100:412, 80:432] = rng.integers(-200, 300, (200, 312, 352), dtype=np.int16)
before = kib("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # resets the high-water mark to the resident size now
data, _, _ = run_default_preprocessing(image, {"spacing": spacing}, bundle, with_mask=False, threads=2)
print(json.dumps({"input": image.nbytes, "extra": kib("VmHWM") - before, "shape": list(data.shape)}))
'''


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable high-water mark")
def test_preprocessing_a_long_ct_holds_no_full_size_copy(ct_model: Path) -> None:
    run = subprocess.run([sys.executable, "-c", _CHILD, str(ct_model)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
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

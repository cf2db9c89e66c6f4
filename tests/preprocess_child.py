"""The child process both preprocessing-memory tests run: a CT-normalised 3 mm version of a test model and a way to
measure a step's own peak (Linux's resettable high-water mark), in a fresh interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PRELUDE = r'''
import copy, dataclasses, json, sys
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
plans["configurations"][bundle.configuration_name].update(
    normalization_schemes=["CTNormalization"], use_mask_for_norm=[False], spacing=[3.0, 3.0, 3.0],
    resampling_fn_data_kwargs={"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    resampling_fn_seg_kwargs={"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None})
plans["transpose_forward"], plans["transpose_backward"] = [0, 1, 2], [0, 1, 2]
plans["foreground_intensity_properties_per_channel"] = {"0": {"mean": 50.0, "std": 120.0, "percentile_00_5": -900.0,
                                                               "percentile_99_5": 1200.0}}
bundle = dataclasses.replace(bundle, plans=plans)
spacing = [1.5, 0.78, 0.78]
rng = np.random.default_rng(0)

def measured(step):
    """Run ``step()``; its result and the resident high-water mark it added, in bytes."""
    before = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the high-water mark to the resident size now
    result = step()
    return result, kib("VmHWM") - before
'''
"""Imports, ``kib(key)``, ``bundle`` (the model with CT normalisation at 3 mm, no transpose), ``spacing``, ``rng``
and ``measured(step)``; a test's script follows it and prints one JSON line."""


def run_child(body: str, model: Path, timeout: int) -> dict[str, Any]:
    """Run :data:`PRELUDE` then ``body`` with ``model`` as argv[1]; the JSON it printed last."""
    run = subprocess.run([sys.executable, "-c", PRELUDE + body, str(model)], capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])

"""TotalSegmentator's own Python API (``totalsegmentator.python_api.totalsegmentator``) run in this process on
stand-in weights (:mod:`totalseg_factory`): the reference Tilewise's TotalSegmentator tasks are compared with.

Two things are changed around TotalSegmentator's call, neither of them a number it computes:

* nnU-Net's ``predict_from_files`` (which TotalSegmentator calls once per model) runs as nnU-Net's own
  ``predict_from_files_sequential``: the same preprocessing, sliding window and export in this process instead of a
  spawned preprocessing process and a pool of six spawned export processes (each importing torch: tens of seconds per
  model on two busy cores, more than the tiny networks' work), and the twelve forked processes nnU-Net starts to
  match one input file name to its case (``create_lists_from_splitted_dataset_folder``) are threads -- with
  ``sequential=False`` it runs as shipped;
* with ``float32_sums`` nnU-Net's two sliding-window sums are float32 instead of float16 (the Gaussian stays
  nnU-Net's float16 map), as :func:`model_factory.nnunet_reference` does: nnU-Net's algorithm without its float16
  rounding, which is what Tilewise's ``reference`` preset computes.

The environment TotalSegmentator sets for nnU-Net (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) is
restored afterwards.
"""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import model_factory as mf
import numpy as np

_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "TOTALSEG_WEIGHTS_PATH", "TOTALSEG_HOME_DIR")


@contextlib.contextmanager
def _environment(weights: Path, home: Path) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in _ENV}
    os.environ["TOTALSEG_WEIGHTS_PATH"], os.environ["TOTALSEG_HOME_DIR"] = str(weights), str(home)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _sequential_nnunet() -> Iterator[None]:
    """nnU-Net's ``predict_from_files`` as its in-process ``predict_from_files_sequential`` (see the docstring)."""
    import totalsegmentator.nnunet  # noqa: F401  (installs TotalSegmentator's own nnU-Net patches first)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities import utils as nnunet_utils

    shipped = nnUNetPredictor.predict_from_files

    def in_process(self: Any, inputs: Any, outputs: Any, save_probabilities: bool = False, overwrite: bool = True,
                   num_processes_preprocessing: int = 0, num_processes_segmentation_export: int = 0,
                   folder_with_segs_from_prev_stage: Any = None, num_parts: int = 1, part_id: int = 0,
                   **kwargs: Any) -> Any:
        assert (num_parts, part_id) == (1, 0)
        return self.predict_from_files_sequential(inputs, outputs, save_probabilities, overwrite,
                                                  folder_with_segs_from_prev_stage, **kwargs)

    nnUNetPredictor.predict_from_files = in_process
    try:
        with mf._patched_attr(nnunet_utils, "Pool", ThreadPool):
            yield
    finally:
        nnUNetPredictor.predict_from_files = shipped


def run_totalsegmentator(image: Path, weights: Path, home: Path, task: str = "total", fast: bool = False,
                         roi_subset: list[str] | None = None, statistics: bool = False, float32_sums: bool = True,
                         sequential: bool = True) -> tuple[np.ndarray, dict | None]:
    """TotalSegmentator's multi-label result for ``image`` in SimpleITK's (z, y, x) voxel order, and its statistics
    (None unless ``statistics``). CPU, quiet, nothing written."""
    from totalsegmentator.python_api import totalsegmentator

    sums = mf._nnunet_with_float32_sums() if float32_sums else contextlib.nullcontext()
    order = _sequential_nnunet() if sequential else contextlib.nullcontext()
    with _environment(weights, home), sums, order, contextlib.redirect_stdout(io.StringIO()):
        result = totalsegmentator(image, None, ml=True, task=task, fast=fast, roi_subset=roi_subset,
                                  statistics=statistics, device="cpu", quiet=True)
    seg_img, stats = result if statistics else (result, None)
    return np.asarray(seg_img.dataobj).astype(np.uint8).transpose(2, 1, 0), stats

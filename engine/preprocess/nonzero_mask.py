"""nnU-Net's nonzero mask with its holes filled, resampled to the network grid in bounded memory, bit for bit.

nnU-Net fills the holes of the nonzero mask, stores it as int8 (0 inside, -1 outside) and resamples it with its
segmentation resampling (``resample_data_or_seg_to_shape(is_seg=True)``). That call converts the whole mask to
float64, sorts a float64 copy to find its labels and, per label, resizes a float64 indicator image and a float64
nearest-neighbour image with skimage: 16 bytes or more per voxel at full resolution at once (6.4 GB more for a
512 x 512 x 1,500 CT's ``prepare``). Here the same int8 mask comes from the boolean one window by window of output
rows:

- one resize of the whole volume (no separate z): each window is interpolated by scipy's ``map_coordinates`` from
  the input rows it reads, at the coordinates skimage's ``resize`` gives scipy's ``zoom``
  (``(o + 0.5) * (n_in / n_out) - 0.5`` per axis), less the window's first input row (an integer below the
  coordinate: the subtraction is exact), with the same interpolation weights and sums as ``zoom``; the labels are
  then decided by batchgenerators' own rule (``_resample_seg_by_argmax``, voxel by voxel) with the whole mask's
  labels and tie rule;
- separate z: the in-plane resizes are nnU-Net's own per-slice calls, made for the slices a window reads; the
  step along the low-resolution axis is nnU-Net's ``map_coordinates`` step at its coordinates, shifted likewise.

Spline orders above 1 prefilter the whole volume, so they, plans naming another function and a batchgenerators
without that rule run nnU-Net's own call on the whole mask. ``tests/test_mask_memory.py`` compares both.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from scipy import ndimage

from ..runtime.parallel import run_all, slabs
from .resampling_settings import Resampling, resampling_settings

WINDOW_VOXELS = 2**20
"""Output voxels per window. A window holds about 60 bytes per output voxel (24 of coordinates, the rest scores and
labels) and 2 per input voxel it reads (its labels and one indicator): about 120 MB per thread for a 512 x 512 CT
resampled to 3 mm."""


def seg_resampling(configuration: dict[str, Any]) -> Resampling | None:
    """The plans' segmentation resampling settings, or None if they name another function or other options."""
    return resampling_settings(configuration, is_seg=True)


def fill_holes(nonzero: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(nonzero)``, using ``nonzero``'s memory as scratch (the caller gives it up).

    scipy's function holds the complement, an empty seed and an int8 copy of the complement besides the result; here
    the complement is made in place and handed over as an int8 view of the same bytes (what scipy's copy holds), and
    the seed is never written (its pages stay unallocated), so the result is the only new full-size array.
    """
    outside = np.logical_not(nonzero, out=nonzero)
    seed = np.zeros(outside.shape, dtype=bool)
    reached = ndimage.binary_dilation(seed, None, -1, outside.view(np.int8), None, 1)
    return np.logical_not(reached, out=reached)


def as_labels(filled: np.ndarray) -> np.ndarray:
    """nnU-Net's int8 mask of boolean ``filled``: 0 inside, -1 outside."""
    return np.where(filled, np.int8(0), np.int8(-1))


def _present_labels(filled: np.ndarray) -> np.ndarray:
    """``np.unique`` of the float64 mask, as nnU-Net's resampler sees it: -1.0 and/or 0.0."""
    return np.array([value for value, present in ((-1.0, not filled.all()), (0.0, bool(filled.any()))) if present])


def _argmax_rule() -> tuple[Callable[..., np.ndarray], str] | None:
    """batchgenerators' label rule of ``resize_segmentation`` and its default tie rule, if this version has them."""
    from batchgenerators.augmentations import utils

    rule = getattr(utils, "_resample_seg_by_argmax", None)
    tiebreak = inspect.signature(utils.resize_segmentation).parameters.get("seg_tiebreak")
    return None if rule is None or tiebreak is None else (rule, tiebreak.default)


def _grid(n_in: int, n_out: int, start: int, stop: int) -> np.ndarray:
    """Input coordinates of output samples ``start:stop`` along an axis resized from ``n_in`` to ``n_out``, as scipy's
    ``zoom(grid_mode=True)`` and nnU-Net's separate-z step compute them."""
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * (float(n_in) / n_out) - 0.5


def _read_rows(coordinates: np.ndarray, length: int) -> tuple[int, int]:
    """The input rows that interpolation of order 0 or 1 at increasing ``coordinates`` reads (edges clamp)."""
    return max(int(np.floor(coordinates[0])), 0), min(int(np.floor(coordinates[-1])) + 2, length)


def _coordinates(axes: list[np.ndarray]) -> np.ndarray:
    """The (3, ...) coordinate array of the grid whose per-axis coordinates are ``axes``."""
    out = np.empty((3, *(a.size for a in axes)))
    for index, values in enumerate(axes):
        shape = [1, 1, 1]
        shape[index] = values.size
        out[index] = values.reshape(shape)
    return out


def _sample(image: np.ndarray, coordinates: np.ndarray, order: int) -> np.ndarray:
    """``map_coordinates`` in nearest mode into float64, as skimage's resize and nnU-Net's z step call it."""
    return ndimage.map_coordinates(image, coordinates, output=np.float64, order=order, mode="nearest")


def _whole_window(filled: np.ndarray, new_shape: tuple[int, ...], order: int, labels: np.ndarray,
                  rule: tuple[Callable[..., np.ndarray], str] | None, rows: tuple[int, int]) -> np.ndarray:
    """Rows ``rows`` of batchgenerators' ``resize_segmentation`` of the float64 mask to ``new_shape``."""
    first = _grid(filled.shape[0], new_shape[0], *rows)
    low, high = _read_rows(first, filled.shape[0])
    coordinates = _coordinates([first - low, *(_grid(n, m, 0, m) for n, m in zip(filled.shape[1:], new_shape[1:]))])
    values = as_labels(filled[low:high])
    if order == 0:
        return _sample(values, coordinates, 0)
    assert rule is not None, "resample_mask passes the rule for order 1"
    argmax, tiebreak = rule

    def score(label: float) -> np.ndarray:
        # skimage clips to the indicator's range, which is [0, 1] wherever a second label exists (else no call)
        return np.clip(_sample(values == label, coordinates, order), 0.0, 1.0)

    return argmax(labels, score, lambda: _sample(values, coordinates, 0), coordinates.shape[1:], np.float64,
                  tiebreak)


def _separate_window(filled: np.ndarray, new_shape: tuple[int, ...], axis: int, settings: Resampling,
                     span: tuple[int, int]) -> np.ndarray:
    """Output slices ``span`` along ``axis`` of nnU-Net's separate-z resampling of the float64 mask."""
    from batchgenerators.augmentations.utils import resize_segmentation

    in_plane = tuple(int(s) for i, s in enumerate(new_shape) if i != axis)
    along = _grid(filled.shape[axis], new_shape[axis], *span)
    resample_z = filled.shape[axis] != new_shape[axis]
    low, high = _read_rows(along, filled.shape[axis]) if resample_z else span
    stack_shape = list(new_shape)
    stack_shape[axis] = high - low
    stack = np.zeros(stack_shape)
    for index in range(low, high):
        source: list[Any] = [slice(None)] * 3
        source[axis] = index
        target = list(source)
        target[axis] = index - low
        stack[tuple(target)] = resize_segmentation(as_labels(filled[tuple(source)]).astype(float), in_plane,
                                                   settings.order)
    if not resample_z:
        return stack
    axes = [_grid(n, n, 0, n) for n in new_shape]
    axes[axis] = along - low
    coordinates = _coordinates(axes)
    if settings.order_z == 0:
        return _sample(stack, coordinates, 0)
    import pandas as pd

    window = np.zeros(coordinates.shape[1:])
    for label in np.sort(pd.unique(stack.ravel())):
        window[np.round(_sample((stack == label).astype(float), coordinates, settings.order_z)) > 0.5] = label
    return window


def resample_mask(filled: np.ndarray, new_shape: Any, current_spacing: list[float], new_spacing: list[float],
                  manager: Any, threads: int) -> np.ndarray:
    """``manager.resampling_fn_seg(as_labels(filled)[None], new_shape, current_spacing, new_spacing)`` as int8.

    ``filled`` is the boolean mask (z, y, x) on the cropped grid, ``manager`` nnU-Net's configuration manager. The
    result (1, *new_shape) is made window by window on ``threads`` threads where the plans allow it (see the
    module's notes), else by nnU-Net's call on the whole mask.
    """
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    new_shape = tuple(int(s) for s in new_shape)
    if filled.shape == new_shape:  # nnU-Net hands the mask back as it is
        return as_labels(filled)[None]
    settings = seg_resampling(manager.configuration)
    rule = _argmax_rule()
    labels = _present_labels(filled)
    job: Callable[[tuple[int, int]], np.ndarray] | None = None
    axis = 0
    if settings is not None:
        separate, lowres_axis = determine_do_sep_z_and_axis(settings.force_separate_z, current_spacing, new_spacing,
                                                            settings.anisotropy_threshold)
        if separate and settings.order_z <= 1:
            axis = int(lowres_axis)
            job = partial(_separate_window, filled, new_shape, axis, settings)
        elif not separate and (settings.order == 0 or (settings.order == 1 and rule is not None)):
            job = partial(_whole_window, filled, new_shape, settings.order, labels, rule)
    if job is None:
        return manager.resampling_fn_seg(as_labels(filled)[None], new_shape, current_spacing,
                                         new_spacing).astype(np.int8)
    if labels.size == 1:  # (the usual CT: no zeros outside the body) each of these paths keeps the one label
        return np.full((1, *new_shape), labels[0], dtype=np.int8)
    resampled = np.empty((1, *new_shape), dtype=np.int8)
    per_row = int(np.prod(new_shape)) // new_shape[axis]
    windows = slabs(new_shape[axis], -(-new_shape[axis] * per_row // WINDOW_VOXELS))

    def run(span: tuple[int, int]) -> None:
        where: list[Any] = [0, slice(None), slice(None), slice(None)]
        where[axis + 1] = slice(*span)
        resampled[tuple(where)] = job(span)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        run_all(pool, [lambda s=s: run(s) for s in windows])
    return resampled

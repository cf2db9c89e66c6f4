"""skimage's ``resize(order, mode='edge', anti_aliasing=False)`` of a 3-D float64 image, computed on all cores.

nnU-Net resamples image data with skimage's ``resize``, which runs scipy's spline ``zoom`` on one core. This module
does the same arithmetic in slabs on a thread pool (scipy's ndimage releases the GIL):

1. pad the image by 12 voxels with its edge values (what ``scipy.ndimage.zoom`` does for ``mode='nearest'``);
2. run the B-spline prefilter along each axis, every slab of independent lines on its own thread;
3. interpolate each slab of output rows from the prefiltered coefficients (``affine_transform`` with a diagonal
   matrix, the same C routine ``zoom`` uses);
4. clip to the input's range, as ``resize`` does.

Each line of coefficients and each output voxel is computed by the same scipy routines with the same inputs as in
a single ``zoom`` call; only the sample coordinates are formed as ``o * scale + offset`` instead of
``(o + 0.5) * scale - 0.5``, which moves results by about 1e-15. After the cast to float32 that nnU-Net applies,
a few voxels can differ by one rounding step (seen with order 1; at most 1.2e-7 in a review's experiments).
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from ..runtime.parallel import SLABS_PER_THREAD, run_all, slabs

_PAD = 12
"""Edge padding before the spline prefilter; scipy's ``_prepad_for_spline_filter`` uses 12 for 'nearest'."""


def _edge_padded(image: np.ndarray, pool: ThreadPoolExecutor, parts: int) -> np.ndarray:
    """``np.pad(image, 12, mode='edge')`` as float64, filled slab by slab."""
    padded = np.empty(tuple(s + 2 * _PAD for s in image.shape), dtype=np.float64)
    p = _PAD

    def fill(start: int, stop: int) -> None:
        rows = padded[p + start:p + stop]
        rows[:, p:-p, p:-p] = image[start:stop]
        rows[:, :p, p:-p] = image[start:stop, :1, :]
        rows[:, -p:, p:-p] = image[start:stop, -1:, :]
        rows[:, :, :p] = rows[:, :, p:p + 1]
        rows[:, :, -p:] = rows[:, :, -p - 1:-p]

    run_all(pool, [lambda a=a, b=b: fill(a, b) for a, b in slabs(image.shape[0], parts)])
    padded[:p] = padded[p:p + 1]
    padded[-p:] = padded[-p - 1:-p]
    return padded


def _prefilter(padded: np.ndarray, order: int, pool: ThreadPoolExecutor, parts: int) -> None:
    """scipy's ``spline_filter(mode='nearest')`` in place: per axis, slabs of lines along another axis in parallel."""
    for axis in range(padded.ndim):
        across = 1 if axis == 0 else 0
        jobs = []
        for start, stop in slabs(padded.shape[across], parts):
            index: list[slice] = [slice(None)] * padded.ndim
            index[across] = slice(start, stop)
            view = padded[tuple(index)]
            jobs.append(lambda v=view, a=axis: ndimage.spline_filter1d(v, order, axis=a, output=v, mode="nearest"))
        run_all(pool, jobs)


def resize_like_skimage(image: np.ndarray, new_shape: Sequence[int], order: int, threads: int) -> np.ndarray:
    """Return ``skimage.transform.resize(image, new_shape, order, mode='edge', anti_aliasing=False)`` (float64).

    ``image`` is a 3-D float array. The result is what skimage gives for ``image.astype(np.float64)``, which is how
    nnU-Net calls it (skimage itself would return float32 for float32 input and rescale integer input); ``order`` is 1 to 5 (order 0 rounds exact half-way coordinates, where the tiny
    coordinate difference described above could pick the other neighbour, so it is not offered).
    """
    if image.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {image.shape}")
    if not 1 <= order <= 5:
        raise ValueError(f"spline order must be 1 to 5, got {order}")
    new_shape = tuple(int(s) for s in new_shape)
    scale = np.array([i / o for i, o in zip(image.shape, new_shape)], dtype=np.float64)
    parts = max(1, threads) * SLABS_PER_THREAD
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        if order > 1:
            coefficients = _edge_padded(image, pool, parts)
            _prefilter(coefficients, order, pool, parts)
            pad = _PAD
        else:
            coefficients, pad = np.asarray(image, dtype=np.float64), 0
        resized = np.empty(new_shape, dtype=np.float64)

        def interpolate(start: int, stop: int) -> None:
            offset = 0.5 * scale - 0.5 + pad
            offset[0] += start * scale[0]
            ndimage.affine_transform(coefficients, scale, offset=offset, output_shape=(stop - start, *new_shape[1:]),
                                     output=resized[start:stop], order=order, mode="nearest", prefilter=False)

        run_all(pool, [lambda a=a, b=b: interpolate(a, b) for a, b in slabs(new_shape[0], parts)])
    low, high = image.min(), image.max()
    if np.isnan(low):
        low, high = np.nanmin(image), np.nanmax(image)
    np.clip(resized, low, high, out=resized)
    return resized

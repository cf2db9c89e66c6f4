"""skimage's ``resize(order, mode='edge', anti_aliasing=False)`` of a 3-D float64 image, computed on all cores.

nnU-Net resamples image data with skimage's ``resize``, which runs scipy's spline ``zoom`` on one core. This module
does the same arithmetic in slabs on a thread pool (scipy's ndimage releases the GIL):

1. pad the image by 12 voxels with its edge values (what ``scipy.ndimage.zoom`` does for ``mode='nearest'``);
2. run the B-spline prefilter along each axis, every slab of independent lines on its own thread;
3. interpolate each slab of output rows from the prefiltered coefficients (``affine_transform`` with a diagonal
   matrix, the same C routine ``zoom`` uses);
4. clip to the input's range, as ``resize`` does.

Holding the padded float64 coefficients of a whole CT would take twice the float32 image (3.3 GB for 512 x 512 x
1,500 voxels), so they live in memory that takes pages only once written, and are made window by window of output
rows: each window's rows of the z-prefilter are computed from whole z-lines, block by block of y (the z-prefilter is
recomputed once per window: same inputs, same numbers), then filtered along y and x and interpolated, and the rows
no later window needs are handed back to the system. Every coefficient and output voxel is computed as before.

Each line of coefficients and each output voxel is computed by the same scipy routines with the same inputs as in
a single ``zoom`` call; only the sample coordinates are formed as ``o * scale + offset`` instead of
``(o + 0.5) * scale - 0.5``, which moves results by about 1e-15. After the cast to float32 that nnU-Net applies,
a few voxels can differ by one rounding step (seen with order 1; at most 1.2e-7 in a review's experiments).
"""
from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from ..runtime.parallel import SLABS_PER_THREAD, run_all, slabs

_PAD = 12
"""Edge padding before the spline prefilter; scipy's ``_prepad_for_spline_filter`` uses 12 for 'nearest'."""
WINDOW_BYTES = 512 * 2**20
"""Float64 coefficient rows made at a time (at least one slab of output rows' worth). Each window runs the z-prefilter
over whole z-lines again, so smaller windows cost time: measured on a 512 x 512 x 300 CT (3 mm model, 2 threads),
prepare took 4.7 s with 128 MB windows, 2.2 s with 512 MB and 1.6 s with 1 GB (1.5 s with the whole array, peak
+0.5 GB); on the 1,500-slice CT 27.2 s with 128 MB and 23.6 s with 512 MB at about the same peak (3.6-3.7 GB)."""
_BLOCK_BYTES = 8 * 2**20
"""One job's block of whole padded z-lines while the z-prefilter runs."""

Source = Callable[[tuple[slice, slice, slice]], np.ndarray]
"""``source(box)``: the image's voxels in ``box`` (any float type), e.g. ``image.__getitem__``."""


class _LazyRows:
    """A float64 array whose pages take memory only once written; :meth:`release` hands leading rows back."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        nbytes = max(1, int(np.prod(shape)) * 8)
        private = getattr(mmap, "MAP_PRIVATE", None)
        if private is None or not hasattr(mmap, "MADV_DONTNEED"):  # Windows: a plain array, nothing handed back
            self._buffer: mmap.mmap | None = None
            self.array = np.empty(shape, dtype=np.float64)
            return
        self._buffer = mmap.mmap(-1, nbytes, flags=private | mmap.MAP_ANONYMOUS)
        self.array = np.frombuffer(self._buffer, dtype=np.float64, count=int(np.prod(shape))).reshape(shape)

    def release(self, rows: int) -> None:
        """Give the memory of rows ``:rows`` back (they read as zeros afterwards)."""
        if self._buffer is None or rows <= 0:
            return
        length = rows * self.array[0].nbytes // mmap.PAGESIZE * mmap.PAGESIZE
        if length:
            self._buffer.madvise(mmap.MADV_DONTNEED, 0, length)


def _axis_index(length: int, start: int, stop: int, pad: int) -> np.ndarray:
    """Indices into an axis of ``length`` voxels that give padded positions ``start:stop`` with edge padding."""
    return np.clip(np.arange(start, stop) - pad, 0, length - 1)


def _padded_z_block(source: Source, shape: tuple[int, int, int], y_start: int, y_stop: int) -> np.ndarray:
    """``np.pad(image, 12, mode='edge')[:, y_start:y_stop]`` as float64 (padded y indices)."""
    p = _PAD
    y = _axis_index(shape[1], y_start, y_stop, p)
    block = np.asarray(source((slice(None), slice(int(y[0]), int(y[-1]) + 1), slice(None))))
    padded = np.empty((shape[0] + 2 * p, y.size, shape[2] + 2 * p), dtype=np.float64)
    padded[p:-p, :, p:-p] = block[:, y - y[0]]
    padded[:p] = padded[p:p + 1]
    padded[-p:] = padded[-p - 1:-p]
    padded[:, :, :p] = padded[:, :, p:p + 1]
    padded[:, :, -p:] = padded[:, :, -p - 1:-p]
    return padded


def _needed_rows(start: int, stop: int, scale: float, offset: float, order: int, length: int) -> tuple[int, int]:
    """Coefficient rows that output rows ``start:stop`` read (with a margin), for the given z scale and offset."""
    low = offset + start * scale
    high = offset + (stop - 1) * scale
    return max(int(np.floor(low)) - order - 1, 0), min(int(np.floor(high)) + order + 2, length)


def _windows(row_slabs: list[tuple[int, int]], need: Callable[[int, int], tuple[int, int]],
             row_bytes: int) -> list[tuple[list[tuple[int, int]], int, int]]:
    """Consecutive output slabs grouped so that each group's coefficient rows fit :data:`WINDOW_BYTES` (or hold
    one slab): (slabs, first row, stop row)."""
    groups: list[tuple[list[tuple[int, int]], int, int]] = []
    for slab in row_slabs:
        low, high = need(*slab)
        if groups and (high - groups[-1][1]) * row_bytes <= WINDOW_BYTES:
            members, first, _ = groups[-1]
            groups[-1] = ([*members, slab], first, high)
        else:
            groups.append(([slab], low, high))
    return groups


def value_range(source: Source, shape: tuple[int, int, int]) -> tuple[np.floating, np.floating]:
    """``(image.min(), image.max())``, or the nan-ignoring pair where the image holds NaN, read slab by slab."""
    parts = -(-int(np.prod(shape)) * 8 // _BLOCK_BYTES)
    row_slabs = slabs(shape[0], parts)

    def blocks() -> Iterator[np.ndarray]:
        return (np.asarray(source((slice(a, b), slice(None), slice(None)))) for a, b in row_slabs)

    lows, highs = zip(*((block.min(), block.max()) for block in blocks()))
    if np.isnan(np.min(lows)):
        lows, highs = zip(*((np.nanmin(block), np.nanmax(block)) for block in blocks()))
        return np.nanmin(lows), np.nanmax(highs)
    return np.min(lows), np.max(highs)


def _coefficient_rows(coefficients: np.ndarray, source: Source, shape: tuple[int, int, int], order: int,
                      rows: tuple[int, int], pool: ThreadPoolExecutor, parts: int) -> None:
    """Make rows ``rows`` of the spline coefficients of the edge-padded image (``order`` > 1): scipy's
    ``spline_filter(mode='nearest')``, the z-pass on whole z-lines block by block of y, then y and x on the rows."""
    first, stop = rows
    padded_y = coefficients.shape[1]
    y_parts = max(parts, -(-coefficients.shape[0] * padded_y * coefficients.shape[2] * 8 // _BLOCK_BYTES))

    def z_pass(y_start: int, y_stop: int) -> None:
        block = _padded_z_block(source, shape, y_start, y_stop)
        ndimage.spline_filter1d(block, order, axis=0, output=block, mode="nearest")
        coefficients[first:stop, y_start:y_stop] = block[first:stop]

    run_all(pool, [lambda a=a, b=b: z_pass(a, b) for a, b in slabs(padded_y, y_parts)])
    window = coefficients[first:stop]
    for axis in (1, 2):
        jobs = [lambda v=window[a:b], ax=axis: ndimage.spline_filter1d(v, order, axis=ax, output=v, mode="nearest")
                for a, b in slabs(window.shape[0], parts)]
        run_all(pool, jobs)


def _plain_rows(coefficients: np.ndarray, source: Source, rows: tuple[int, int]) -> None:
    """Rows ``rows`` of the image as float64 (order 1 interpolates the image itself)."""
    coefficients[rows[0]:rows[1]] = source((slice(*rows), slice(None), slice(None)))


def resize_source(source: Source, shape: Sequence[int], new_shape: Sequence[int], order: int, threads: int,
                  clip_range: tuple[np.floating, np.floating]) -> np.ndarray:
    """:func:`resize_like_skimage` of the image of ``shape`` that ``source`` gives, clipped to ``clip_range`` (the
    image's range), holding about :data:`WINDOW_BYTES` of coefficients at a time."""
    shape3 = tuple(int(s) for s in shape)
    new_shape = tuple(int(s) for s in new_shape)
    scale = np.array([i / o for i, o in zip(shape3, new_shape)], dtype=np.float64)
    pad = _PAD if order > 1 else 0
    store = _LazyRows(tuple(s + 2 * pad for s in shape3))
    coefficients = store.array
    parts = max(1, threads) * SLABS_PER_THREAD
    resized = np.empty(new_shape, dtype=np.float64)
    base = 0.5 * scale - 0.5 + pad

    def interpolate(start: int, stop: int) -> None:
        offset = base.copy()
        offset[0] += start * scale[0]
        ndimage.affine_transform(coefficients, scale, offset=offset, output_shape=(stop - start, *new_shape[1:]),
                                 output=resized[start:stop], order=order, mode="nearest", prefilter=False)

    def need(start: int, stop: int) -> tuple[int, int]:
        return _needed_rows(start, stop, float(scale[0]), float(base[0]), order, coefficients.shape[0])

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for members, first, stop in _windows(slabs(new_shape[0], parts), need, coefficients[0].nbytes):
            store.release(first)  # no later window reads rows before this one's first
            rows = (max(first, done), stop)
            if rows[1] > rows[0]:
                if order > 1:
                    _coefficient_rows(coefficients, source, shape3, order, rows, pool, parts)
                else:
                    _plain_rows(coefficients, source, rows)
                done = rows[1]
            run_all(pool, [lambda a=a, b=b: interpolate(a, b) for a, b in members])
    np.clip(resized, *clip_range, out=resized)
    return resized


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
    low, high = image.min(), image.max()
    if np.isnan(low):
        low, high = np.nanmin(image), np.nanmax(image)
    return resize_source(image.__getitem__, image.shape, new_shape, order, threads, (low, high))

"""nnU-Net's logit resampling rule (linear in-plane; nearest or linear along a much coarser axis), slab by slab.

nnunetv2's ``resample_data_or_seg_to_shape`` maps an output index ``i`` to the input coordinate
``(i + 0.5) * in / out - 0.5`` with edge clamping, per axis (linear or nearest), and resamples a coarse axis on its
own when its spacing is anisotropic. The rule is separable, so :class:`LogitResampler` applies it one axis at a time
and can compute any range of output rows along axis 0 from just the input rows that range reads: peak memory is one
slab, never classes x the whole output grid, and a slab's values do not depend on where the slabs are cut.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

ORDERS = (0, 1)
"""Interpolation orders computed here (nnU-Net's plans use 1 in-plane and 0 or 1 along z for logits)."""


def _axis_taps(in_size: int, out_size: int, start: int, stop: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output indices [start, stop) along one axis: the two input indices each reads and the weight of the second,
    as scipy.ndimage computes them for nnunetv2 (mode 'nearest': a tap beyond an edge reads the edge)."""
    out = np.arange(start, stop, dtype=np.float64)
    source = (out + 0.5) * (in_size / out_size) - 0.5
    if order == 0:
        low = np.clip(np.floor(source + 0.5), 0, in_size - 1).astype(np.int64)
        return low, low, np.zeros(len(out))
    floor = np.floor(source)
    low = np.clip(floor, 0, in_size - 1).astype(np.int64)
    return low, np.clip(floor + 1, 0, in_size - 1).astype(np.int64), source - floor


def resample_axis(x: torch.Tensor, axis: int, in_size: int, out_size: int, start: int, stop: int, order: int,
                   offset: int = 0, into: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Output rows [start, stop) along ``axis`` of ``x``, whose rows along it are input rows offset, offset+1, ...;
    ``into``: two blocks of the result's shape to compute it in (the result is then the first)."""
    if in_size == out_size and start == 0 and stop == out_size and offset == 0:
        return x
    low, high, weight = _axis_taps(in_size, out_size, start, stop, order)
    low_rows = torch.as_tensor(low - offset, device=x.device)
    first = x.index_select(axis, low_rows) if into is None else torch.index_select(x, axis, low_rows, out=into[0])
    if order == 0:
        return first
    high_rows = torch.as_tensor(high - offset, device=x.device)
    second = x.index_select(axis, high_rows) if into is None else torch.index_select(x, axis, high_rows, out=into[1])
    shape = [1] * x.ndim
    shape[axis] = len(weight)
    weights = torch.as_tensor(weight, dtype=x.dtype, device=x.device).reshape(shape)
    return torch.lerp(first, second, weights) if into is None else torch.lerp(first, second, weights, out=first)


class LogitResampler:
    """Resamples (channels, *network grid) logits to ``out_shape`` with nnU-Net's rule, one axis-0 slab at a time.

    ``order`` applies to every axis except a separately resampled coarse one, which gets ``order_z`` (nnU-Net's
    separate-z rule, decided by nnunetv2's own ``determine_do_sep_z_and_axis``).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], current_spacing: Sequence[float],
                 new_spacing: Sequence[float], order: int = 1, order_z: int = 0,
                 force_separate_z: bool | None = None, separate_z_anisotropy_threshold: float | None = None) -> None:
        from nnunetv2.configuration import ANISO_THRESHOLD
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

        if order not in ORDERS or order_z not in ORDERS:
            raise ValueError(f"unsupported interpolation order {order}/{order_z} (supported: {ORDERS})")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        threshold = ANISO_THRESHOLD if separate_z_anisotropy_threshold is None else separate_z_anisotropy_threshold
        separate, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing, threshold)
        coarse = int(axis[0] if isinstance(axis, (list, tuple, np.ndarray)) else axis) if separate else None
        self.orders = tuple(order_z if a == coarse else order for a in range(len(self.out_shape)))
        interpolated = coarse is not None and order_z == 1 and self.in_shape[coarse] != self.out_shape[coarse]
        self._coarse = coarse if interpolated else None
        """The axis nnunetv2 interpolates on its own after the others (else None: all axes in one pass)."""
        self._output: torch.Tensor | None = None
        """The in-plane result of the last slab, whose memory the next slab of the same shape reuses."""

    @property
    def _fused(self) -> bool:
        """Whether :meth:`slab` resamples both in-plane axes with torch's bilinear kernel (which computes its
        weights in float32) rather than one axis at a time with weights computed in float64."""
        return self.orders[1] == self.orders[2] == 1

    @property
    def identity(self) -> bool:
        """True when the output grid is the input grid (nothing to resample)."""
        return self.in_shape == self.out_shape

    def input_rows(self, start: int, stop: int) -> tuple[int, int]:
        """The input rows [low, high) along axis 0 that output rows [start, stop) read."""
        low, high, _ = _axis_taps(self.in_shape[0], self.out_shape[0], start, stop, self.orders[0])
        return int(low.min()), int(high.max()) + 1

    def taps(self, axis: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """nnU-Net's two input indices and the second's weight for output indices [start, stop) along ``axis``."""
        return _axis_taps(self.in_shape[axis], self.out_shape[axis], start, stop, self.orders[axis])

    def rows_ready(self, available: int) -> int:
        """How many leading output rows along axis 0 read only input rows below ``available`` (a streaming export
        resamples those once the sliding window has finished that many rows)."""
        if available >= self.in_shape[0]:
            return self.out_shape[0]
        _, high, _ = _axis_taps(self.in_shape[0], self.out_shape[0], 0, self.out_shape[0], self.orders[0])
        return int(np.searchsorted(np.maximum.accumulate(high), available, side="left"))

    def slab(self, rows: torch.Tensor, start: int, stop: int, first_row: int) -> torch.Tensor:
        """Output rows [start, stop) (channels, stop - start, ...) from ``rows``: input rows first_row, first_row+1, ...
        along axis 0 (at least :meth:`input_rows`), all of every other axis. Computed in float32 on ``rows``' device.

        The result is a channels-innermost view (``stride(0) == 1``): the label rule's argmax over channels then
        reads contiguous memory, which is what makes many-label exports fast. It is valid until the next call: where
        both in-plane axes are resampled, the next slab of the same shape is written into the same memory.
        """
        if self.in_shape[0] == self.out_shape[0]:
            return self._in_plane(rows[:, start - first_row:stop - first_row]).permute(3, 0, 1, 2)
        low, high = self.input_rows(start, stop)
        # Axis 0 first, on the network's in-plane grid (why: its planes are many times smaller than the output's, so
        # no output-sized plane is made per input row, kept for the next slab or lerped again: a fifth less time
        # and one output plane of memory instead of up to five). The bound of error_bound holds in either order:
        # each axis's convex combination adds its own rounding to values no larger than the inputs.
        near = rows[:, low - first_row:high - first_row].float()
        along = resample_axis(near, 1, self.in_shape[0], self.out_shape[0], start, stop, self.orders[0], low)
        return self._in_plane(along).permute(3, 0, 1, 2)

    def release_output_block(self) -> None:
        """Let go of the block the last whole-plane slab was written into (the streaming export's last rows go
        window by window: :mod:`.resample_window`)."""
        self._output = None

    def _in_plane(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` (channels, rows, y, x) resampled along the two in-plane axes: (rows, y, x, channels), contiguous."""
        x = rows.float()
        if self._fused:
            # Both in-plane axes linear (nnU-Net transposes the coarse axis to the front): one fused 2-D kernel over
            # every input row, channels-last so that each output voxel's channels sit together.
            planes = x.permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)
            if tuple(planes.shape[2:]) != self.out_shape[1:]:
                planes = self._bilinear(planes)
            return planes.permute(0, 2, 3, 1)  # (rows, y, x, channels), contiguous
        for axis in (2, 1):  # one axis at a time where their orders differ (or nearest: an exact selection)
            x = resample_axis(x, axis + 1, self.in_shape[axis], self.out_shape[axis], 0, self.out_shape[axis],
                               self.orders[axis])
        return x.permute(1, 2, 3, 0).contiguous()

    def _bilinear(self, planes: torch.Tensor) -> torch.Tensor:
        """``F.interpolate(planes, out_shape[1:], mode="bilinear")`` (the same kernel, bit for bit) written into the
        last slab's output where the shape allows (why: a fresh output-sized block per slab, 110 MiB a row on the
        105-label model, is either faulted in again by the system or, where the command line keeps freed memory
        (:mod:`~..runtime.allocator`), left in the heap between the tiles' blocks)."""
        rows, channels = planes.shape[:2]
        shape = (rows, channels, *self.out_shape[1:])
        output = self._output
        same = output is not None and tuple(output.shape) == shape and output.dtype == planes.dtype
        if not same or output.device != planes.device:
            self._output = output = None  # the old block goes before the new one is made
            output = torch.empty((rows, *self.out_shape[1:], channels), dtype=planes.dtype, device=planes.device)
            self._output = output = output.permute(0, 3, 1, 2)  # channels innermost, as the kernel writes them
        return torch.ops.aten.upsample_bilinear2d.out(planes, list(self.out_shape[1:]), False, None, None, out=output)

    def error_bound(self, magnitude: float) -> float:
        """A bound on how far a value of :meth:`slab` lies from nnunetv2's value (computed in float64 and rounded
        once to float32) where no input value exceeds ``magnitude`` in size.

        Linear interpolation is a convex combination, so each axis adds its own rounding: a few float32 steps of
        ``magnitude`` for a weight computed in float64 and the lerp; torch's bilinear kernel also computes its
        source coordinate in float32 (off by up to about ``2 * in_size`` steps), which moves the weight and so the
        value by that times the difference of two inputs (at most ``2 * magnitude``). Twice these, for margin.
        Nearest-neighbour axes select exactly (weights computed in float64), as does an axis not resampled."""
        steps = 1.0  # nnunetv2's own rounding of its float64 value
        for axis, (size_in, size_out, order) in enumerate(zip(self.in_shape, self.out_shape, self.orders)):
            if size_in != size_out and order == 1:
                steps += 2 * ((4 * size_in + 3) if self._fused and axis > 0 else 4)
        return float(torch.finfo(torch.float32).eps) * float(magnitude) * steps

    def points(self, rows: torch.Tensor, first_row: int, index: torch.Tensor,
               heads: torch.Tensor | None = None) -> torch.Tensor:
        """The values at output voxels ``index`` ((N, 3): row, y, x on the whole output grid) computed as nnunetv2
        computes them, to the last bit: scipy.ndimage's arithmetic in float64 (weights ``1 - t`` and ``1 - (1 - t)``,
        each input value times the weights axis by axis, the corners added in index order; a separately interpolated
        coarse axis last), rounded once to float32; (channels, N) on the CPU (float64 is not on every device), or
        with ``heads`` ((N,): one channel per voxel) just those values, (N,).
        ``rows`` as for :meth:`slab` (input rows first_row, first_row + 1, ...)."""
        at = index.cpu().numpy()
        channels = slice(None) if heads is None else heads.cpu().numpy()
        shape = (rows.shape[0], len(at)) if heads is None else (len(at),)
        taps = []
        for axis, (size_in, size_out, order) in enumerate(zip(self.in_shape, self.out_shape, self.orders)):
            low, high, t = (tap[at[:, axis]] for tap in _axis_taps(size_in, size_out, 0, size_out, order))
            offset = first_row if axis == 0 else 0
            first = torch.as_tensor(1.0 - t, dtype=torch.float64)
            taps.append(((low - offset, first), (high - offset, 1.0 - first)))
        coarse = self._coarse
        sides = []
        for side in ((0,) if coarse is None else (0, 1)):
            total = torch.zeros(shape, dtype=torch.float64)
            for corner in itertools.product((0, 1), repeat=3):
                if coarse is not None and corner[coarse] != side:
                    continue
                picked = [axis_taps[c] for axis_taps, c in zip(taps, corner)]
                coeff = rows[channels, picked[0][0], picked[1][0], picked[2][0]].cpu().double()
                for axis, (_, weight) in enumerate(picked):
                    if axis != coarse:
                        coeff = coeff * weight
                total = total + coeff
            sides.append(total)
        if coarse is None:
            return sides[0].float()
        return (sides[0] * taps[coarse][0][1] + sides[1] * taps[coarse][1][1]).float()

    def slabs(self, rows_per_slab: int) -> list[tuple[int, int]]:
        """Output row ranges along axis 0 of at most ``rows_per_slab`` rows, covering the output grid."""
        step = max(1, int(rows_per_slab))
        return [(s, min(s + step, self.out_shape[0])) for s in range(0, self.out_shape[0], step)]

    def input_rows_per_output_row(self) -> float:
        """How many input rows one output row needs on average (for sizing slabs)."""
        return self.in_shape[0] / self.out_shape[0]


def resample_logits(logits: torch.Tensor, new_shape: Sequence[int], current_spacing: Sequence[float],
                    new_spacing: Sequence[float], order: int = 1, order_z: int = 0,
                    force_separate_z: bool | None = None,
                    separate_z_anisotropy_threshold: float | None = None) -> torch.Tensor:
    """All of ``logits`` resampled to ``new_shape`` in one slab (small volumes and tests; export goes slab by slab)."""
    resampler = LogitResampler(logits.shape[1:], new_shape, current_spacing, new_spacing, order, order_z,
                               force_separate_z, separate_z_anisotropy_threshold)
    if resampler.identity:
        return logits
    return resampler.slab(logits, 0, resampler.out_shape[0], 0)


def slab_rows(resampler: LogitResampler, channels: int, budget_bytes: int) -> int:
    """Output rows per slab so that one slab's working set (input rows resampled in-plane, twice for the
    interpolation's two taps, plus the output and the near-tie test's byte per value) stays within ``budget_bytes``."""
    plane_out = math.prod(resampler.out_shape[1:])
    per_row = channels * plane_out * (4 * (3 + 2 * resampler.input_rows_per_output_row()) + 1)
    return max(1, min(resampler.out_shape[0], int(budget_bytes // max(per_row, 1))))

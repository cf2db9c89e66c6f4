"""A window of output rows (a part of each plane) resampled with nnU-Net's logit rule, for the streaming export's
last rows while their tiles still run (:mod:`.streaming`): only the window's own input voxels are read, and they are
final even though the rest of the plane is not.

Torch's bilinear kernel computes a plane from its first output row and column on; it cannot start inside the plane.
So an axis is resampled by the kernel where the window starts at the first index (the indices before it computed
too, where it does not), mirrored where the window ends at the last index (nnU-Net's rule maps index ``i`` to
``(i + 0.5) * in / out - 0.5``, which mirrors exactly: the mirrored window starts at its own first index), and on
its own with float64 weights (:func:`~.resample.resample_axis`) where the window lies inside the plane. The values
are within :meth:`~.resample.LogitResampler.error_bound` of nnunetv2's, as the whole-plane slabs' are, not bit for bit
the same; :func:`~.ties.settle_ties` makes the labels nnU-Net's either way.
"""
from __future__ import annotations

import torch

from .resample import LogitResampler, resample_axis

WINDOW_ROWS = 4
"""At most this many output rows per window (why: four rows of a 248 x 248 window of 105 labels took a fifth less
time per row than one, on 2 AMD EPYC cores; more only add memory)."""

Range = tuple[int, int]


class WindowResampler:
    """Windows (output rows along axis 0, a y range and an x range) of ``resampler``'s output grid.

    :meth:`slab` gives each window as a channels-innermost view valid until the next call (its working blocks are
    kept for the next window of the same shape), with the axes :meth:`mirrored` names last to first."""

    def __init__(self, resampler: LogitResampler) -> None:
        self.resampler = resampler
        self._blocks: dict[str, torch.Tensor] = {}

    def _kernel_axis(self, axis: int) -> bool:
        """Whether torch's bilinear kernel may resample ``axis`` (1: y, 2: x): linear and resized."""
        resampler = self.resampler
        return resampler.orders[axis] == 1 and resampler.in_shape[axis] != resampler.out_shape[axis]

    def _ends_inside(self, axis: int, span: Range) -> bool:
        """Whether ``span`` ends at the axis's last output index and starts after its first (it is mirrored)."""
        return span[1] == self.resampler.out_shape[axis] and span[0] > 0

    def fused(self, ys: Range) -> bool:
        """Whether both in-plane axes go through the kernel at once: both linear and resized, ``ys`` starting at
        the first row or ending at the last."""
        return self._kernel_axis(1) and self._kernel_axis(2) and (ys[0] == 0 or self._ends_inside(1, ys))

    def mirrored(self, ys: Range, xs: Range) -> tuple[bool, bool]:
        """Whether :meth:`slab` gives the window's y and x axes last to first."""
        return (self.fused(ys) and self._ends_inside(1, ys),
                self._kernel_axis(2) and self._ends_inside(2, xs))

    def inputs(self, ys: Range, xs: Range) -> tuple[slice, slice]:
        """The input y and x ranges that :meth:`slab` reads for the window ``ys`` x ``xs``."""
        return self._input_range(1, ys, self.fused(ys)), self._input_range(2, xs, self._kernel_axis(2))

    def _input_range(self, axis: int, span: Range, through_kernel: bool) -> slice:
        resampler = self.resampler
        if through_kernel and self._ends_inside(axis, span):
            return slice(int(resampler.taps(axis, *span)[0].min()), resampler.in_shape[axis])
        low, high, _ = resampler.taps(axis, 0 if through_kernel else span[0], span[1])
        return slice(int(low.min()), int(high.max()) + 1)

    def slab(self, rows: torch.Tensor, start: int, stop: int, first_row: int, ys: Range, xs: Range) -> torch.Tensor:
        """Output rows [start, stop) of the window ``ys`` x ``xs`` from ``rows`` (input rows ``first_row``, ... of
        whole planes, at least :meth:`~.resample.LogitResampler.input_rows`), (channels, rows, y, x) in float32 on
        ``rows``' device, channels innermost, mirrored as :meth:`mirrored` says."""
        self.resampler.release_output_block()  # the whole-plane slabs are over
        y_part, x_part = self.inputs(ys, xs)
        planes = self._along_rows(rows, start, stop, first_row, y_part, x_part)
        mirror_y, mirror_x = self.mirrored(ys, xs)
        planes = self._mirror(planes, mirror_y, mirror_x)
        if self.fused(ys):
            return self._through_kernel(planes, ys, xs, mirror_y, mirror_x)
        resampler = self.resampler
        shape = (planes.shape[0], ys[1] - ys[0], planes.shape[2], planes.shape[3])
        band = resample_axis(planes, 1, resampler.in_shape[1], resampler.out_shape[1], ys[0], ys[1],
                              resampler.orders[1], y_part.start,
                              into=(self._block("y", shape, planes.device), self._block("y2", shape, planes.device)))
        if self._kernel_axis(2):
            return self._through_kernel(band, None, xs, False, mirror_x)
        shape = (band.shape[0], band.shape[1], xs[1] - xs[0], band.shape[3])
        band = resample_axis(band, 2, resampler.in_shape[2], resampler.out_shape[2], xs[0], xs[1],
                              resampler.orders[2], x_part.start,
                              into=(self._block("x", shape, band.device), self._block("x2", shape, band.device)))
        return band.permute(3, 0, 1, 2)

    def _through_kernel(self, planes: torch.Tensor, ys: Range | None, xs: Range, mirror_y: bool,
                        mirror_x: bool) -> torch.Tensor:
        """``planes`` (rows, y, x, channels) through torch's bilinear kernel: both axes, or with ``ys`` None only x
        (a scale of 1 along y reads each row exactly)."""
        resampler = self.resampler
        heights = (planes.shape[1], planes.shape[1]) if ys is None else _kernel_span(ys, mirror_y)
        widths = _kernel_span(xs, mirror_x)
        scale_y = 1.0 if ys is None else resampler.out_shape[1] / resampler.in_shape[1]
        # the kernel reads an axis whose input and output sizes are equal as unscaled, whatever its scale: one more
        # row or column (a copy of the last, which no output reads) makes it interpolate
        if ys is not None and planes.shape[1] == heights[0]:
            planes = torch.cat([planes, planes[:, -1:]], dim=1)
        if planes.shape[2] == widths[0]:
            planes = torch.cat([planes, planes[:, :, -1:]], dim=2)
        shape = (planes.shape[0], heights[0], widths[0], planes.shape[3])
        out = self._block("out", shape, planes.device)
        torch.ops.aten.upsample_bilinear2d.out(planes.permute(0, 3, 1, 2), [heights[0], widths[0]], False, scale_y,
                                               resampler.out_shape[2] / resampler.in_shape[2],
                                               out=out.permute(0, 3, 1, 2))
        return out[:, heights[0] - heights[1]:, widths[0] - widths[1]:].permute(3, 0, 1, 2)

    def _along_rows(self, rows: torch.Tensor, start: int, stop: int, first_row: int, y_part: slice,
                    x_part: slice) -> torch.Tensor:
        """Output rows [start, stop) along axis 0 of the input window ``y_part`` x ``x_part``, as (rows, y, x,
        channels) in a kept block: each output row is one lerp of its two input rows written straight into the
        channels-innermost layout the in-plane axes need (why: a gather, then a transposing copy, cost three times
        as much)."""
        resampler = self.resampler
        low, high, weight = resampler.taps(0, start, stop)
        shape = (stop - start, y_part.stop - y_part.start, x_part.stop - x_part.start, rows.shape[0])
        planes = self._block("z", shape, rows.device)
        for row, (first, second, t) in enumerate(zip(low, high, weight)):
            below = rows[:, first - first_row, y_part, x_part].permute(1, 2, 0).float()
            if t == 0 or first == second:
                planes[row].copy_(below)
            else:
                above = rows[:, second - first_row, y_part, x_part].permute(1, 2, 0).float()
                torch.lerp(below, above, float(t), out=planes[row])
        return planes

    def _mirror(self, planes: torch.Tensor, mirror_y: bool, mirror_x: bool) -> torch.Tensor:
        """``planes`` with the named axes last to first (a copy: the window's input is small)."""
        axes = [axis for axis, mirror in ((1, mirror_y), (2, mirror_x)) if mirror]
        if not axes:
            return planes
        return torch.flip(planes, axes)

    def _block(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 block of ``shape`` kept for the next window of the same shape (why: a fresh block of this size
        is faulted in page by page; for the 105-label model that made the window's x axis seven times slower)."""
        block = self._blocks.get(name)
        if block is None or tuple(block.shape) != shape or block.device != device:
            self._blocks.pop(name, None)
            block = self._blocks[name] = torch.empty(shape, dtype=torch.float32, device=device)
        return block


def _kernel_span(span: Range, mirrored: bool) -> Range:
    """(output size the kernel computes, the window's size at its end): from the first index to the window's end,
    or the window alone when mirrored."""
    return (span[1] - span[0], span[1] - span[0]) if mirrored else (span[1], span[1] - span[0])


def rows_per_window(windows: WindowResampler, channels: int, budget_bytes: int,
                    spans: list[tuple[Range, Range]]) -> int:
    """Output rows per :meth:`WindowResampler.slab` call so that the largest of ``spans`` ((y range, x range)
    pairs) keeps its blocks (the rows along axis 0, two y passes, the kernel's output, the near-tie test's byte
    per value) within ``budget_bytes``; at most :data:`WINDOW_ROWS`."""
    def per_row(ys: Range, xs: Range) -> int:
        y_part, x_part = windows.inputs(ys, xs)
        height, width = ys[1] - ys[0], x_part.stop - x_part.start
        computed = _kernel_span(xs, windows.mirrored(ys, xs)[1])[0]
        kernel_rows = _kernel_span(ys, windows.mirrored(ys, xs)[0])[0] if windows.fused(ys) else height
        along = (y_part.stop - y_part.start) * width
        y_passes = 0 if windows.fused(ys) else 2 * height * width
        return channels * (4 * (along + y_passes + kernel_rows * computed) + height * (xs[1] - xs[0]))
    largest = max((per_row(ys, xs) for ys, xs in spans), default=1)
    return max(1, min(windows.resampler.out_shape[0], WINDOW_ROWS, int(budget_bytes // max(largest, 1))))

"""Labels decided where every network voxel an output voxel is interpolated from has the same clear winner.

nnU-Net resamples each head's logits linearly (or by nearest neighbour) to the input grid, a convex combination of
at most eight network voxels, and takes the argmax. If all of those voxels give the same head ``k`` a lead larger
than the arithmetic can err, every convex combination of them does too, so the output voxel's label is ``k``
without resampling any head. Inside organs and background that holds for nearly every voxel, so
:class:`AgreementLabels` computes the labels of a slab from each network row's winner and lead (one pass over the
heads at the network's resolution, several times coarser than the input grid) and resamples all heads only at the
remaining voxels near a boundary, where :func:`~.ties.settle_ties` gives nnU-Net's own values to any near tie. The
labels are nnU-Net's voxel for voxel, as the full export's are; only the work differs (why: on a 105-head model the
full export spent most of its time interpolating heads that could not win).
"""
from __future__ import annotations

import itertools

import torch

from ..model.bundle import ModelBundle
from .resample import LogitResampler
from .ties import NONLINEARITY_TIES, settle_ties

_EPS = float(torch.finfo(torch.float32).eps)
_LEAD_STEPS = 16.0
"""A winner's lead must exceed this many float32 steps of the slab's largest logit (plus nnU-Net's softmax margin):
nnU-Net rounds its float64 interpolation once to float32 (one step per value, two per lead), and the lead itself is
computed in float32; eight times that for margin."""
_REUSE_GROWTH = 4.0
"""A network row's winners found for one slab serve the next only while that slab's largest logit is at most this
many times larger (their leads then still exceed two of its steps twice over: :meth:`AgreementLabels._plane`)."""
_BOUNDARY_STEPS = 24.0
"""How far (in float32 steps of the largest logit) this module's float32 interpolation at boundary voxels may lie
from nnU-Net's value: three rounded weight products and the eight-term sum, about 11 steps, twice over."""
_MOST_AT_BOUNDARIES = 0.5
"""A slab with more of its voxels at boundaries than this is left to the full export (whose one pass over all heads
costs about 0.3 us per voxel on a 105-head model, against 0.5 us per boundary voxel here: measured on 2 AMD EPYC
cores; a random-weight network's labels change at nearly every network voxel)."""
_LONGEST_PAUSE = 16
"""After a declined slab the next ones are declined without looking, for 1, 2, 4, ... up to this many slabs' rows
(why: on a random-weight model every slab is declined, and looking cost a sixth of its export); a slab taken
starts the count again."""
_BOUNDARY_CHUNK = 1 << 16
"""Boundary voxels resampled at a time (65,536 x heads x 4 bytes, twice: 55 MB for 105 heads)."""


MANY_HEADS = 16
"""Fewer heads than this are resampled whole: that is already cheap, and this module's work per boundary voxel costs
more (the demo model's 4 heads: export 0.40 s with it, 0.26 s without; 105 heads with organ-like logits: 4.1 s
against 29.2 s; ``tests/bench_agreement_export.py``, 2 AMD EPYC cores)."""


def agreement_applies(bundle: ModelBundle) -> bool:
    """Whether labels are decided this way: an argmax over many heads (a region model's labels come from each
    region's own sign, which this module does not track)."""
    return not bundle.label_manager.has_regions and int(bundle.label_manager.num_segmentation_heads) >= MANY_HEADS


class AgreementLabels:
    """nnU-Net's labels of export slabs of one case, computed as the module describes; slabs are asked for first to
    last, as :class:`~.resample.LogitResampler` serves them (each network row's in-plane result is kept for the next
    slab that reads it)."""

    def __init__(self, resampler: LogitResampler, bundle: ModelBundle) -> None:
        self.resampler = resampler
        self.bundle = bundle
        self.boundary_voxels = 0
        """Output voxels that needed all heads resampled (for benchmarks and tests)."""
        self.decided_voxels = 0
        """Output voxels labelled from their neighbours' agreement alone."""
        self.declined_rows = 0
        """Output rows left to the full export (slabs mostly at boundaries)."""
        self._paused_rows = 0
        """Output rows still to decline without looking (see :data:`_LONGEST_PAUSE`)."""
        self._pause = 1
        """Slabs' rows the next decline pauses for."""
        self._in_plane_taps = [self._taps(axis, 0, resampler.out_shape[axis]) for axis in (1, 2)]
        self._kept: dict[int, tuple[torch.Tensor, float]] = {}
        """Network row -> its winners on the output plane (int16, -1 where the in-plane neighbours disagree or a lead
        is too small) and the largest logit their leads were checked against, for the next slab's rows that read the
        same network row."""

    def _taps(self, axis: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """nnU-Net's two taps and the second's weight for output indices [start, stop) along ``axis``; a tap whose
        weight is exactly 0 is replaced by the first (it adds exactly nothing to nnU-Net's value)."""
        low, high, weight = self.resampler.taps(axis, start, stop)
        high = high.copy()
        high[weight == 0] = low[weight == 0]
        return torch.as_tensor(low), torch.as_tensor(high), torch.as_tensor(weight, dtype=torch.float64)

    def labels(self, rows: torch.Tensor, start: int, stop: int, first_row: int) -> torch.Tensor | None:
        """Labels (stop - start, y, x) of output rows [start, stop) from ``rows``: the network grid's rows
        ``first_row``, ``first_row + 1``, ... (heads, rows, y, x), as :meth:`~.resample.LogitResampler.slab` takes
        them; None when most of the slab's voxels lie at boundaries (the full export is faster there). The current
        slab's largest logit sets the margins."""
        if self._paused_rows > 0:  # the slabs just before were mostly boundaries: this one very likely is too
            self._paused_rows -= stop - start
            self.declined_rows += stop - start
            return None
        smallest, largest = torch.aminmax(rows)
        magnitude = max(-float(smallest), float(largest))
        z_taps = self._taps(0, start, stop)
        low, high, _ = z_taps
        needed = sorted({*low.tolist(), *high.tolist()})
        # (rows, y, x, heads): each network voxel's heads side by side for the winner search and the gathers
        channels_last = rows.float().permute(1, 2, 3, 0).contiguous()
        planes = {index: self._plane(channels_last, index, first_row, magnitude) for index in needed}
        self._kept = {index: plane for index, plane in planes.items() if index >= int(low[-1])}
        below = torch.stack([planes[index][0] for index in low.tolist()])
        above = torch.stack([planes[index][0] for index in high.tolist()])
        winners = torch.where(below == above, below, torch.full_like(below, -1))
        del below, above, planes
        boundary = (winners < 0).nonzero()
        if len(boundary) > _MOST_AT_BOUNDARIES * winners.numel():
            self.declined_rows += stop - start
            self._paused_rows = self._pause * (stop - start)
            self._pause = min(2 * self._pause, _LONGEST_PAUSE)
            return None
        self._pause = 1
        self.boundary_voxels += len(boundary)
        self.decided_voxels += winners.numel() - len(boundary)
        dtype = torch.uint8 if rows.shape[0] <= 255 else torch.int16
        labels = winners.clamp(min=0).to(dtype)
        for chunk in boundary.split(_BOUNDARY_CHUNK):
            labels[tuple(chunk.T)] = self._boundary_labels(rows, channels_last, chunk, z_taps, start, first_row,
                                                           magnitude, dtype)
        return labels

    def _plane(self, channels_last: torch.Tensor, index: int, first_row: int,
               magnitude: float) -> tuple[torch.Tensor, float]:
        """Network row ``index``'s winners on the output plane: -1 where a lead is too small for a slab whose largest
        logit is ``magnitude`` (see :data:`_LEAD_STEPS`) or the four in-plane taps do not share a winner; and the
        magnitude they were checked against."""
        kept = self._kept.get(index)
        if kept is not None and kept[1] * _REUSE_GROWTH >= magnitude:
            return kept[0].to(channels_last.device), kept[1]  # the rows move to the host when device memory runs out
        top = channels_last[index - first_row].topk(2, dim=-1)
        lead = top.values[..., 0] - top.values[..., 1]
        lead_needed = _LEAD_STEPS * _EPS * magnitude + NONLINEARITY_TIES
        winner = torch.where(lead > lead_needed, top.indices[..., 0], -1).to(torch.int16)
        (y_low, y_high, _), (x_low, x_high, _) = ((low.to(winner.device), high.to(winner.device), None)
                                                  for low, high, _ in self._in_plane_taps)
        corners = [winner.index_select(0, y).index_select(1, x) for y in (y_low, y_high) for x in (x_low, x_high)]
        agreed = corners[0]
        for corner in corners[1:]:
            agreed = torch.where(corner == agreed, agreed, torch.full_like(agreed, -1))
        return agreed, magnitude

    def _boundary_labels(self, rows: torch.Tensor, channels_last: torch.Tensor, voxels: torch.Tensor,
                         z_taps: tuple[torch.Tensor, ...], start: int, first_row: int, magnitude: float,
                         dtype: torch.dtype) -> torch.Tensor:
        """Labels at ``voxels`` ((N, 3): slab row, y, x) from all heads interpolated in float32 (one weighted sum of
        the eight network voxels), near ties settled with nnU-Net's own values."""
        values = self._interpolate(channels_last, voxels, z_taps, first_row)
        heads = values.T  # (heads, N), heads innermost in memory
        labels = heads.argmax(0).to(dtype)
        whole_grid = voxels + torch.tensor([start, 0, 0], device=voxels.device)

        def exact(index: torch.Tensor, heads: torch.Tensor | None) -> torch.Tensor:
            return self.resampler.points(rows, first_row, whole_grid[index[:, 0]], heads)

        settle_ties(labels, heads, self.bundle, _BOUNDARY_STEPS * _EPS * magnitude, exact, through_probabilities=False)
        return labels

    def _interpolate(self, channels_last: torch.Tensor, voxels: torch.Tensor, z_taps: tuple[torch.Tensor, ...],
                     first_row: int) -> torch.Tensor:
        """Every head at ``voxels`` ((N, 3): slab row, y, x), a weighted sum of the eight network voxels around each
        in ``channels_last`` (network rows from ``first_row``, y, x, heads): (N, heads), float32."""
        at = voxels.cpu()
        per_axis = [tuple(tap[at[:, axis]] for tap in taps)
                    for axis, taps in enumerate((z_taps, *self._in_plane_taps))]
        _, height, width, heads = channels_last.shape
        flat = channels_last.view(-1, heads)
        total = torch.zeros((len(at), heads), dtype=torch.float32, device=channels_last.device)
        for sides in itertools.product((0, 1), repeat=3):
            weight = torch.ones(len(at), dtype=torch.float64)
            index = []
            for (low, high, second), side in zip(per_axis, sides):
                weight = weight * (second if side else 1.0 - second)
                index.append(high if side else low)
            if not bool((weight > 0).any()):
                continue  # this corner adds nothing anywhere (nearest or not resampled along one of its axes)
            flat_index = ((index[0] - first_row) * height + index[1]) * width + index[2]
            gathered = flat.index_select(0, flat_index.to(flat.device))
            total.addcmul_(gathered, weight.to(device=flat.device, dtype=torch.float32)[:, None])
        return total

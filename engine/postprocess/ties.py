"""Labels that float32 rounding could decide, computed as nnU-Net computes them.

The export resamples logits in float32 (fast: one fused bilinear kernel in-plane) and takes their argmax (or each
region's ``logit > 0``). nnU-Net resamples them in float64, rounds the result once to float32, and takes the argmax
of their softmax (each region's ``sigmoid > 0.5``). The two agree wherever the two largest values (a region's value
and 0) lie further apart than the float32 resampling can err (:meth:`LogitResampler.error_bound`). Near a boundary
between two labels some voxels do not: :func:`settle_ties` gives those nnU-Net's values
(:meth:`LogitResampler.points`) and nnU-Net's rule, so that the labels are nnU-Net's there too. Without it a few
voxels per million differ (measured 15 of 5.3 million on a 176^3 CT-like case), and in a cascade the low-res
stage's flipped voxels are one-hot input that the full-res network spreads to hundreds more.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..model.bundle import ModelBundle

NONLINEARITY_TIES = 4 * float(torch.finfo(torch.float32).eps)
"""Where two float32 logits this close (or a region's logit this close to 0) can give equal softmax probabilities
(a sigmoid of exactly 0.5): nnU-Net's rule then decides differently from an argmax of the logits."""


Exact = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""nnU-Net's float32 values at given voxels ``index`` ((N, ndim) positions in a slab's labels): of every head,
(heads, N), or with ``heads`` ((N,) one head per voxel) of just that head, (N,)."""


def near_ties(values: torch.Tensor, bundle: ModelBundle, error: float) -> torch.Tensor:
    """The voxels of ``values`` (heads, ...) whose label could change if each value moved by up to ``error``: a
    runner-up within ``2 * error`` of the largest value, or a region's value within ``error`` of 0."""
    if bundle.label_manager.has_regions:
        return (values.abs() <= error + NONLINEARITY_TIES).any(0)
    best = values.amax(0)
    close = values >= best - _tie_margin(error)
    return close.sum(0, dtype=torch.int16) > 1


def _tie_margin(error: float) -> float:
    """How close to the largest value a head may be and still be nnU-Net's largest (or tie with it under softmax)."""
    return 2 * error + NONLINEARITY_TIES


def settle_ties(labels: torch.Tensor, values: torch.Tensor, bundle: ModelBundle, error: float, exact: Exact, *,
                through_probabilities: bool, best: torch.Tensor | None = None) -> int:
    """Relabel, in place, the voxels of ``labels`` (the label rule applied to ``values``, (heads, ...) resampled
    logits within ``error`` of nnU-Net's; ``best``: their largest value per voxel, when the caller has it) that
    :func:`near_ties` finds, with nnU-Net's rule on nnU-Net's float32 values there (``exact``). The rule is the one
    nnunetv2's export applies (:func:`nnunet_label_rule`). Returns how many voxels it looked at.

    Where that rule is the argmax of the logits, only the close heads are computed (why: a near tie is between two
    or three of a many-label model's heads, and nnU-Net's values of all of them cost most of a random-weight 105-head
    export); a head further off lies below the largest even in nnU-Net's values, so the argmax is the same."""
    if bundle.label_manager.has_regions or not argmax_of_logits(bundle, through_probabilities):
        index = near_ties(values, bundle, error).nonzero()
        if len(index) == 0:
            return 0
        settled = torch.as_tensor(nnunet_label_rule(bundle, exact(index, None).cpu(), through_probabilities))
    else:
        best = values.amax(0) if best is None else best
        index = _runner_up_within(values, labels, best, _tie_margin(error)).nonzero()
        if len(index) == 0:
            return 0
        at = tuple(index.T)
        close = values[(slice(None), *at)] >= (best[at] - _tie_margin(error))  # (heads, tied voxels)
        pairs = close.T.nonzero()  # (voxel number, head), voxel by voxel, heads ascending
        settled = _first_largest(exact(index[pairs[:, 0]], pairs[:, 1]).cpu(), pairs[:, 0].cpu(),
                                 pairs[:, 1].cpu(), len(index))
    labels[tuple(index.T)] = settled.to(device=labels.device, dtype=labels.dtype)
    return len(index)


def _runner_up_within(values: torch.Tensor, labels: torch.Tensor, best: torch.Tensor, margin: float) -> torch.Tensor:
    """The voxels whose second head (``labels``: the argmax of ``values``, (heads, ...); ``best``: its value) lies
    within ``margin`` of the first. The first is set to -inf for one max over the heads and then put back, so
    ``values`` is left as it was (why: three times faster than counting the heads above the threshold, which was
    two fifths of a random-weight 105-head export)."""
    winner = labels.to(torch.int64).unsqueeze(0)
    values.scatter_(0, winner, float("-inf"))
    runner_up = values.amax(0)
    values.scatter_(0, winner, best.unsqueeze(0))
    return runner_up >= best - margin


def _first_largest(values: torch.Tensor, voxel: torch.Tensor, head: torch.Tensor, voxels: int) -> torch.Tensor:
    """Per voxel, the head with the largest of its ``values`` (one value per (voxel, head) pair), the lowest head
    among equals, as ``argmax`` picks it."""
    largest = torch.full((voxels,), float("-inf"), dtype=values.dtype).scatter_reduce(0, voxel, values, "amax")
    winners = values == largest[voxel]
    lowest = torch.full((voxels,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    return lowest.scatter_reduce(0, voxel[winners], head[winners], "amin")


def argmax_of_logits(bundle: ModelBundle, through_probabilities: bool) -> bool:
    """Whether nnunetv2's label rule here is the argmax of the logits themselves (see :func:`nnunet_label_rule`)."""
    return not through_probabilities and hasattr(bundle.label_manager, "convert_logits_to_segmentation")


def nnunet_label_rule(bundle: ModelBundle, logits: torch.Tensor, through_probabilities: bool) -> torch.Tensor:
    """nnunetv2's labels of float32 ``logits`` (heads, ...): when its export also writes probabilities, those
    (softmax or sigmoid) decide; otherwise, in the nnunetv2 versions that have it, the argmax of the logits themselves
    (two logits a float32 step apart can have equal softmax probabilities, so the two rules differ at such ties)."""
    manager = bundle.label_manager
    if argmax_of_logits(bundle, through_probabilities):
        return torch.as_tensor(manager.convert_logits_to_segmentation(logits))
    return torch.as_tensor(manager.convert_probabilities_to_segmentation(manager.apply_inference_nonlin(logits)))

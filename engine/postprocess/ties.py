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


def near_ties(values: torch.Tensor, bundle: ModelBundle, error: float) -> torch.Tensor:
    """The voxels of ``values`` (heads, ...) whose label could change if each value moved by up to ``error``: a
    runner-up within ``2 * error`` of the largest value, or a region's value within ``error`` of 0."""
    if bundle.label_manager.has_regions:
        return (values.abs() <= error + NONLINEARITY_TIES).any(0)
    best = values.amax(0)
    close = values >= best - (2 * error + NONLINEARITY_TIES)
    return close.sum(0, dtype=torch.int16) > 1


def settle_ties(labels: torch.Tensor, values: torch.Tensor, bundle: ModelBundle, error: float,
                exact: Callable[[torch.Tensor], torch.Tensor], *, through_probabilities: bool) -> int:
    """Relabel, in place, the voxels of ``labels`` (the label rule applied to ``values``, (heads, ...) resampled
    logits within ``error`` of nnU-Net's) that :func:`near_ties` finds, with nnU-Net's rule on ``exact(index)``:
    nnU-Net's float32 values (heads, N) at those voxels (``index``: (N, ndim) positions in ``labels``). The rule is
    the one nnunetv2's export applies (:func:`nnunet_label_rule`). Returns how many voxels it looked at."""
    index = near_ties(values, bundle, error).nonzero()
    if len(index) == 0:
        return 0
    settled = torch.as_tensor(nnunet_label_rule(bundle, exact(index).cpu(), through_probabilities))
    labels[tuple(index.T)] = settled.to(device=labels.device, dtype=labels.dtype)
    return len(index)


def nnunet_label_rule(bundle: ModelBundle, logits: torch.Tensor, through_probabilities: bool) -> torch.Tensor:
    """nnunetv2's labels of float32 ``logits`` (heads, ...): when its export also writes probabilities, those
    (softmax or sigmoid) decide; otherwise, in the nnunetv2 versions that have it, the argmax of the logits themselves
    (two logits a float32 step apart can have equal softmax probabilities, so the two rules differ at such ties)."""
    manager = bundle.label_manager
    if not through_probabilities and hasattr(manager, "convert_logits_to_segmentation"):
        return torch.as_tensor(manager.convert_logits_to_segmentation(logits))
    return torch.as_tensor(manager.convert_probabilities_to_segmentation(manager.apply_inference_nonlin(logits)))

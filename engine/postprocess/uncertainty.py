"""How sure the model is at each voxel, and where it is not: the uncertainty map and its regions to check.

The map is computed in the export's slab loop (:meth:`~.export.LabelSink.write`) from the same resampled logits
the labels come from, as their probabilities after nnU-Net's inference nonlinearity, so it costs no second pass over
the logit sums and no second network-grid array; only a uint8 volume on the input grid. Per voxel, in percent
(0 = certain):

- softmax models: ``100 * (1 - (p1 - p2))``, with ``p1`` and ``p2`` the two largest class probabilities: 100 where
  the two most likely classes tie;
- region-based (sigmoid) models: ``100 * (1 - min_r |2 p_r - 1|)``: 100 where any region's probability is 0.5.

Rounded to the nearest integer. Voxels outside nnU-Net's crop (the part of the image it did not segment) are 0.
With several folds or mirrors the logits are already averaged, so the map reflects their combined vote.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..data.volume import Geometry

UNCERTAIN_THRESHOLD = 50
"""The map value from which a voxel counts as uncertain (``tilewise batch``'s ``uncertain_volume_ml``): the most
likely class is at most 50 percentage points ahead of the next (a region's probability within 0.25 of 0.5)."""

MAP_CHUNK_VALUES = 2**19
"""Resampled values (voxels x heads) a CPU turns into the map at a time, in numpy: 2 MB of float32 per temporary,
which stays in the core's cache. Why: torch's multi-threaded kernels on a whole slab (a softmax, then the top two)
took 2.2 s for 0.5 M voxels of a 105-label model, and torch on small chunks waits at a thread barrier per kernel,
which under load cost up to 7 s; numpy's single-threaded chunks take 0.17 s of CPU (2 shared EPYC cores), twice
torch's argmax for the labels."""

FEW_HEADS = 32
"""Up to this many heads a chunk is transposed to (heads, voxels) first, so that numpy reduces across voxels with
SIMD: 2-3x faster for 2 to 14 heads; with more the transposed copy costs more than it saves (105 heads: 0.24 s
against 0.17 s of CPU per 0.5 M voxels)."""


def slab_uncertainty(values: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """The uncertainty map (uint8, 0-100) of one slab from its resampled logits (heads, ...): the top-two margin of
    their softmax, or the region whose sigmoid is nearest 0.5 (see the module's docstring). The softmax is not
    formed: ``p1 - p2 = (1 - exp(l2 - l1)) / sum_j exp(lj - l1)``, and for a region ``|2 sigmoid(l) - 1| =
    tanh(|l| / 2)``. On a CPU a chunk of voxels at a time (:data:`MAP_CHUNK_VALUES`), elsewhere whole-slab kernels."""
    heads = int(values.shape[0])
    if values.device.type != "cpu":
        return _percent(_confidence(values.float(), has_regions))
    # (voxels, heads) view: each voxel's heads side by side for the export's channels-innermost slabs
    voxels = values.float().reshape(heads, -1).numpy().T
    confidence = np.empty(len(voxels), dtype=np.float32)
    step = max(1, MAP_CHUNK_VALUES // heads)
    for start in range(0, len(voxels), step):
        confidence[start:start + step] = _chunk_confidence(voxels[start:start + step], has_regions)
    return _percent(torch.from_numpy(confidence)).reshape(values.shape[1:])


def _chunk_confidence(logits: np.ndarray, has_regions: bool) -> np.ndarray:
    """``p1 - p2`` (softmax) or ``min_r |2 p_r - 1|`` (regions) per voxel of ``logits`` (voxels, heads), in numpy."""
    if logits.shape[-1] <= FEW_HEADS:
        return _few_heads(np.ascontiguousarray(logits.T), has_regions)
    return _many_heads(logits, has_regions)


def _few_heads(logits: np.ndarray, has_regions: bool) -> np.ndarray:
    """:func:`_chunk_confidence` of ``logits`` (heads, voxels), a copy it may overwrite."""
    if has_regions:
        return np.tanh(np.abs(logits).min(axis=0) / 2)
    if len(logits) < 2:
        return np.ones(logits.shape[1], dtype=np.float32)
    np.subtract(logits, logits.max(axis=0), out=logits)
    np.exp(logits, out=logits)  # the largest is exp(0) = 1
    total = logits.sum(axis=0)
    top = logits == 1  # the largest, and any other it rounds to (a tie: margin 0)
    tie = top.sum(axis=0, dtype=np.int16) > 1
    logits[top] = 0
    return (1 - np.where(tie, 1, logits.max(axis=0))) / total


def _many_heads(logits: np.ndarray, has_regions: bool) -> np.ndarray:
    """:func:`_chunk_confidence` of ``logits`` (voxels, heads), left as they are."""
    if has_regions:
        return np.tanh(np.abs(logits).min(axis=-1) / 2)
    voxels = np.arange(len(logits))
    best = logits.argmax(axis=-1)
    shifted = logits - logits[voxels, best][:, None]
    np.exp(shifted, out=shifted)  # the largest is exp(0) = 1
    total = shifted.sum(axis=-1)
    shifted[voxels, best] = 0  # one of them: another that ties with it stays 1 (margin 0)
    return (1 - shifted.max(axis=-1)) / total


def _confidence(logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """:func:`_chunk_confidence` in torch, over axis 0 of ``logits`` (heads, ...): for GPUs, whole slabs at once."""
    if has_regions:
        return torch.tanh(logits.abs().amin(0) / 2)
    if logits.shape[0] < 2:
        return torch.ones(logits.shape[1:], dtype=torch.float32, device=logits.device)
    shifted = (logits - logits.amax(0)).exp_()
    total = shifted.sum(0)
    top = shifted == 1
    second = torch.where(top.sum(0, dtype=torch.int16) > 1, 1.0, shifted.masked_fill_(top, 0.0).amax(0))
    return (1 - second) / total


def probabilities_uncertainty(probabilities: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """The uncertainty map (uint8, 0-100) from probabilities (heads, ...) after the inference nonlinearity (what
    ``--nnunet-exact`` gets from nnU-Net's own export)."""
    if has_regions:
        confidence = (2 * probabilities.float() - 1).abs_().amin(0)
    elif probabilities.shape[0] < 2:
        confidence = torch.ones(probabilities.shape[1:], dtype=torch.float32, device=probabilities.device)
    else:
        top = probabilities.float().topk(2, dim=0, sorted=True).values
        confidence = top[0] - top[1]
    return _percent(confidence)


def _percent(confidence: torch.Tensor) -> torch.Tensor:
    """``100 * (1 - confidence)`` rounded to the nearest integer, as uint8."""
    return confidence.neg_().add_(1).mul_(100).round_().clamp_(0, 100).to(torch.uint8)


def slab_budget(budget_bytes: int, heads: int, input_rows_per_output_row: int) -> int:
    """The part of an export slab's ``budget_bytes`` left for resampling when the slab's map is computed too, so the
    slab with its map stays within the budget: 5 bytes per value (a GPU's whole-slab exponentials and mask; a CPU's
    chunks need less) and 5 per voxel (the float confidence and the uint8 map), against resampling's bytes per value
    (:func:`~.resample.slab_rows`)."""
    resampling = 4 * (3 + 2 * input_rows_per_output_row) + 1
    return int(budget_bytes * resampling / (resampling + 5 + 5 / max(heads, 1)))


def voxel_ml(geometry: Geometry) -> float:
    """One voxel's volume in millilitres (a 2D image's voxels count as 1 mm thick)."""
    return math.prod(geometry.spacing) / 1000.0


def uncertain_volume_ml(uncertainty: np.ndarray, geometry: Geometry, threshold: int = UNCERTAIN_THRESHOLD) -> float:
    """The volume in millilitres of the voxels whose uncertainty is at least ``threshold`` (percent)."""
    return int(np.count_nonzero(uncertainty >= threshold)) * voxel_ml(geometry)


@dataclass(frozen=True)
class UncertainRegion:
    """One connected region of uncertain voxels (z, y, x voxel positions on the input grid)."""

    centre: tuple[int, int, int]
    """The region's voxel nearest its centroid (so it lies inside the region): where to look."""
    bbox: tuple[slice, slice, slice]
    voxels: int
    volume_ml: float
    mean_uncertainty: float
    labels: tuple[int, ...] = ()
    """The label values present in the region (0 = background), most frequent first; empty without labels."""


def uncertain_regions(uncertainty: np.ndarray, geometry: Geometry, labels: np.ndarray | None = None,
                      threshold: int = UNCERTAIN_THRESHOLD, min_volume_ml: float = 0.05,
                      limit: int = 50, min_thickness: int = 3) -> list[UncertainRegion]:
    """The connected regions (26-connected) of voxels with ``uncertainty >= threshold`` of at least
    ``min_volume_ml``, largest first, at most ``limit``; each with the labels present in it when ``labels`` (same
    shape) is given.

    With ``min_thickness`` 3 (the default) the voxels are first opened with the 6-neighbour cross, which drops bands
    one or two voxels thick: the thin seam along every boundary between two structures, where a model is unsure by
    nature and which joins into one region as large as the boundary (133 mL on the demo brain); what stays are the
    blobs worth a look. 1 keeps every voxel. The uncertain volume (:func:`uncertain_volume_ml`) counts every voxel.
    """
    mask = uncertainty >= threshold
    if min_thickness >= 3:
        cross = ndimage.generate_binary_structure(uncertainty.ndim, 1)
        mask = ndimage.binary_opening(mask, structure=cross, iterations=(min_thickness - 1) // 2)
    structure = np.ones((3,) * uncertainty.ndim, dtype=bool)
    components, count = ndimage.label(mask, structure=structure)
    del mask
    if count == 0:
        return []
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    each_ml = voxel_ml(geometry)
    smallest = max(1, math.ceil(min_volume_ml / each_ml - 1e-9))
    kept = [int(i) for i in np.argsort(-sizes, kind="stable")[:limit] if sizes[i] >= smallest]
    boxes = ndimage.find_objects(components)
    return [_region(components, uncertainty, labels, boxes[i - 1], i, int(sizes[i]), each_ml) for i in kept]


def _region(components: np.ndarray, uncertainty: np.ndarray, labels: np.ndarray | None, bbox: tuple[slice, ...],
            index: int, voxels: int, each_ml: float) -> UncertainRegion:
    """One region's summary from its bounding box."""
    inside = components[bbox] == index
    points = np.argwhere(inside)
    centroid = points.mean(axis=0)
    nearest = points[int(np.argmin(((points - centroid) ** 2).sum(axis=1)))]
    centre = tuple(int(p + s.start) for p, s in zip(nearest, bbox))
    present: tuple[int, ...] = ()
    if labels is not None:
        counts = np.bincount(labels[bbox][inside].astype(np.int64))
        present = tuple(int(v) for v in np.argsort(-counts, kind="stable") if counts[v] > 0)
    return UncertainRegion(centre=centre, bbox=tuple(bbox), voxels=voxels,  # type: ignore[arg-type]
                           volume_ml=voxels * each_ml, mean_uncertainty=float(uncertainty[bbox][inside].mean()),
                           labels=present)

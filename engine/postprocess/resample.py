"""nnU-Net's logit resampling rule (linear in-plane, nearest along a much coarser axis) in torch, on any device."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_MODES = {0: "nearest-exact", 1: "linear"}


def _interpolate(x: torch.Tensor, size: Sequence[int], order: int) -> torch.Tensor:
    """Resize the trailing ``len(size)`` axes of ``x`` (batch, channels, ...) like skimage/scipy (align_corners=False)."""
    if order not in _MODES:
        raise ValueError(f"unsupported interpolation order {order}")
    mode = _MODES[order]
    if mode == "linear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
    return F.interpolate(x, size=tuple(size), mode=mode)


def resample_logits(
    logits: torch.Tensor,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    order: int = 1,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    separate_z_anisotropy_threshold: float | None = None,
) -> torch.Tensor:
    """Resample (channels, z, y, x) logits to ``new_shape`` as nnunetv2's ``resample_data_or_seg_to_shape`` does.

    When nnU-Net's separate-z rule applies (one axis much coarser than the others), slices are resized in-plane with
    ``order`` and the coarse axis with ``order_z``; otherwise all axes are resized together with ``order``.
    """
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    new_shape = tuple(int(s) for s in new_shape)
    if tuple(logits.shape[1:]) == new_shape:
        return logits
    threshold = ANISO_THRESHOLD if separate_z_anisotropy_threshold is None else separate_z_anisotropy_threshold
    separate, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing, threshold)
    x = logits.float()[None]
    if not separate:
        return _interpolate(x, new_shape, order)[0]
    axis = int(axis)
    moved = x.movedim(axis + 2, 2)  # (1, C, S, a, b) with S the coarse axis
    in_plane = tuple(s for i, s in enumerate(new_shape) if i != axis)
    _, channels, slices, height, width = moved.shape
    flat = moved.permute(0, 2, 1, 3, 4).reshape(slices, channels, height, width)
    flat = _interpolate(flat, in_plane, order)
    moved = flat.reshape(1, slices, channels, *in_plane).permute(0, 2, 1, 3, 4)
    if slices != new_shape[axis]:
        along = moved.permute(0, 1, 3, 4, 2).reshape(1, channels * in_plane[0] * in_plane[1], slices)
        along = _interpolate(along, (new_shape[axis],), order_z)
        moved = along.reshape(1, channels, in_plane[0], in_plane[1], new_shape[axis]).permute(0, 1, 4, 2, 3)
    return moved.movedim(2, axis + 2)[0].contiguous()

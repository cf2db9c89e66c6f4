"""Converting a fold network to OpenVINO so that it computes what torch computes.

OpenVINO's CPU plugin turns instance normalisation into its MVN kernel and spatial sums into single reductions,
which accumulate a whole tile (half a million values at 80^3) in float32 in one pass. On tiles that are mostly air
the statistics are then off by about 3e-3 relative, and an nnU-Net network flips about 0.5% of its voxels against
torch (whose CPU kernels accumulate in float64). :class:`PooledInstanceNorm` computes the same normalisation with
average pooling, one axis at a time, so no accumulation is longer than one axis of the tile; on our CPUs it is also
about twice as fast as MVN. Every conversion is checked against the torch network before it is used.
"""
from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

_CONVERSION_LOCK = threading.Lock()
"""Tracing (torch.jit) and the warning filters are process-wide: one conversion at a time (the viewer may time
passes on one thread while a run loads the model on another)."""
_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_TOLERANCE = {"fp32": 1e-3, "bf16": 0.1, "fp16": 0.1}
"""Largest difference from torch, relative to the largest logit, that a converted model may show on a random tile;
reduced precisions are checked only for gross errors."""


class PooledInstanceNorm(nn.Module):
    """``torch.nn.InstanceNorm{1,2,3}d`` (without running statistics), written so that OpenVINO computes its
    statistics accurately: means are average pools over one spatial axis at a time."""

    def __init__(self, norm: _InstanceNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.dim() - 2
        for axis in range(spatial):
            kernel = [1] * spatial
            kernel[axis] = x.shape[2 + axis]
            x = _POOLS[spatial](x, kernel)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every channel of every sample over its spatial axes, then scale and shift."""
        centred = x - self._mean(x)
        scale = 1.0 / torch.sqrt(self._mean(centred * centred) + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            scale = scale * self.weight.view(shape)
        out = centred * scale
        return out + self.bias.view(shape) if self.bias is not None else out


def with_pooled_norms(network: nn.Module) -> nn.Module | None:
    """A copy of ``network`` with every instance norm replaced by :class:`PooledInstanceNorm`; None if it has none."""
    copied = copy.deepcopy(network)
    replacements: dict[int, PooledInstanceNorm] = {}  # one per norm, wherever it is referenced (nnU-Net aliases them)
    for module in list(copied.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _InstanceNorm) and not child.track_running_stats:
                setattr(module, name, replacements.setdefault(id(child), PooledInstanceNorm(child)))
    return copied.eval() if replacements else None


def example_shape(network: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A small input ``network`` traces on as on ``input_shape``: twice its total stride along each axis (capped at
    the tile), or the tile itself when the network does not say its strides.

    Why: TorchScript tracing keeps every activation of the example pass alive. A 320-feature network on a
    160 x 128 x 112 tile (TotalSegmentator's size) peaked at 16.9 GB converted from a whole tile, and ran a 24 GB
    machine out of memory; traced on 64 x 64 x 32, with the input shape then set to the tile's, it converts within
    2.7 GB to the same logits (6.9e-6 of their range from torch on the check tile either way).
    """
    strides = getattr(getattr(network, "encoder", None), "strides", None)
    spatial = len(input_shape) - 2
    if not strides or spatial < 1:
        return tuple(input_shape)
    total = [1] * spatial
    for stride in strides:
        per_axis = list(stride) if isinstance(stride, (list, tuple)) else [int(stride)] * spatial
        total = [t * int(s) for t, s in zip(total, per_axis)]
    return (*input_shape[:2], *(min(2 * t, size) for t, size in zip(total, input_shape[2:])))


def candidates(network: nn.Module, input_shape: tuple[int, ...]) -> Iterator[tuple[str, nn.Module, tuple[int, ...]]]:
    """The conversions to try, best first: with pooled norms (if it has any), then as it is; each traced on a small
    example (:func:`example_shape`) first and, should that one disagree with torch, on a whole tile."""
    pooled = with_pooled_norms(network)
    for recipe, candidate in ([("pooled instance norms", pooled)] if pooled is not None else []) + [("stock", network)]:
        small = example_shape(candidate, input_shape)
        yield recipe, candidate, small
        if small != tuple(input_shape):
            yield f"{recipe} traced on a whole tile", candidate, tuple(input_shape)


def convert(network: nn.Module, input_shape: tuple[int, ...], example: tuple[int, ...] | None = None) -> Any:
    """``openvino.convert_model`` of ``network`` for a static input of ``input_shape``, traced on an input of
    ``example``'s shape (default: ``input_shape``)."""
    import openvino

    with _CONVERSION_LOCK, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter from torch.jit
        return openvino.convert_model(network.cpu().eval(), example_input=torch.zeros(example or input_shape),
                                      input=[input_shape])


def check_tile(input_shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed random tile conversions are checked on."""
    return torch.randn(input_shape, generator=torch.Generator().manual_seed(0))


def agreement_error(converted: torch.Tensor, reference: torch.Tensor, precision: str) -> str | None:
    """Why ``converted`` logits cannot stand in for ``reference`` at ``precision``; None when they can."""
    if not bool(torch.isfinite(converted).all()):
        return "non-finite logits"
    scale = max(float(reference.abs().max()), 1e-6)
    relative = float((converted - reference).abs().max()) / scale
    if relative > _TOLERANCE[precision]:
        return f"logits differ from torch by {relative:.1e} of their range"
    return None

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


def candidates(network: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The networks to try converting, best first: with pooled norms (if it has any), then as it is."""
    pooled = with_pooled_norms(network)
    if pooled is not None:
        yield "pooled instance norms", pooled
    yield "stock", network


def convert(network: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """``openvino.convert_model`` of ``network`` for a static input of ``input_shape``."""
    import openvino

    with _CONVERSION_LOCK, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter from torch.jit
        return openvino.convert_model(network.cpu().eval(), example_input=torch.zeros(input_shape),
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

"""Forward passes with PyTorch on CPU, CUDA or Apple MPS (autocast for reduced precision)."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ..runtime.devices import PRECISIONS
from .mirrors import average_folds_and_mirrors, mirror_combinations


class TorchBackend:
    """The fold networks on one torch device; see :class:`~tilewise.engine.backends.ForwardBackend`."""

    name = "torch"
    variable_batch = True

    def __init__(self, networks: list[nn.Module], mirror_axes: tuple[int, ...], device: torch.device,
                 precision: str, keep_network_dtype: bool = False) -> None:
        self.networks = networks
        self.keep_network_dtype = keep_network_dtype
        self.mirrors = mirror_combinations(mirror_axes)
        self.device = device
        self.precision = precision
        self.convert_seconds = 0.0  # PyTorch runs the networks as they are: nothing to convert, cache or say
        self.cache_events: list[str] = []
        self.notes: list[str] = []

    @property
    def passes_per_tile(self) -> int:
        """Forward passes per tile: (1 + mirrors) x folds."""
        return (1 + len(self.mirrors)) * len(self.networks)

    def describe(self) -> str:
        """E.g. 'torch cpu bf16'."""
        return f"torch {self.device.type} {self.precision}"

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits averaged over folds and mirrors, on :attr:`device`: float32, or the network's own output dtype
        with ``keep_network_dtype`` (nnU-Net sums mirrors in it: float16 under CUDA autocast)."""
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        if self.keep_network_dtype:
            folds = list(self.networks)
        else:
            folds = [lambda x, network=network: network(x).float() for network in self.networks]
        with autocast:
            return average_folds_and_mirrors(folds, inputs, self.mirrors, torch.flip)

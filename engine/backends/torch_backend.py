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
                 precision: str) -> None:
        self.networks = networks
        self.mirrors = mirror_combinations(mirror_axes)
        self.device = device
        self.precision = precision

    @property
    def passes_per_tile(self) -> int:
        """Forward passes per tile: (1 + mirrors) x folds."""
        return (1 + len(self.mirrors)) * len(self.networks)

    def describe(self) -> str:
        """E.g. 'torch cpu bf16'."""
        return f"torch {self.device.type} {self.precision}"

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits averaged over folds and mirrors, float32, on :attr:`device`."""
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        folds = [lambda x, network=network: network(x).float() for network in self.networks]
        with autocast:
            return average_folds_and_mirrors(folds, inputs, self.mirrors, torch.flip)

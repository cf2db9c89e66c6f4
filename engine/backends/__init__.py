"""Forward-pass backends: what the sliding-window runner asks for one batch of tiles.

A backend owns the fold networks on its device and turns a batch of tiles into logits averaged over folds and
mirrors, exactly as nnU-Net averages them. The runner does everything else (tiles, Gaussian weighting, events,
cancel), so every backend gets the same tiling, ordering and accumulation.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ForwardBackend(Protocol):
    """Runs batches of tiles through every fold and mirror of a model."""

    name: str
    """Short name shown in reports: 'torch' or 'openvino'."""
    precision: str
    """The precision it computes in: fp32, fp16 or bf16."""
    device: torch.device
    """Where the returned logits live (the runner accumulates them there or on the host)."""
    variable_batch: bool
    """Whether a smaller batch needs less memory (False for models compiled for a static batch)."""
    convert_seconds: float
    """Seconds spent converting the networks for this backend when it was made (0 when none or all cached)."""
    cache_events: list[str]
    """Per fold, where its converted network came from: 'cached', 'converted' or 'rebuilt: why' (empty when the
    backend converts nothing)."""
    notes: list[str]
    """Sentences for the person running it (e.g. a first run that converted the model); empty when none."""

    @property
    def passes_per_tile(self) -> int:
        """Forward passes per tile: (1 + mirrors) x folds."""
        ...

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (batch, heads, *patch) in float32, averaged over folds and mirrors, for inputs (batch, channels,
        *patch) on :attr:`device`. They may be the backend's own output buffer (OpenVINO without mirroring), which
        the next call overwrites: add or copy them before calling again; the caller may change them in place."""
        ...

    def describe(self) -> str:
        """One line for reports, e.g. 'torch cpu bf16'."""
        ...


def release_working_memory(backend: ForwardBackend) -> None:
    """Free the intermediate buffers a backend keeps between passes; its next pass allocates them again.

    Only OpenVINO keeps them (``CompiledModel.release_memory`` freed 1.1 GB of one full-size TotalSegmentator
    stand-in's 1.7 GB after a pass; PyTorch frees activations after each pass). Why: a TotalSegmentator task loads
    five such models, and with every model holding its buffers ``total`` on a 512 x 512 x 300 CT was killed for
    memory on a 24 GB machine.
    """
    for fold in getattr(backend, "folds", ()):
        release = getattr(getattr(fold, "compiled", None), "release_memory", None)
        if callable(release):
            release()

"""Handing tensors from the sliding window's thread to the export thread on the same device.

On a CUDA device the export runs on a CUDA stream of its own, so resampling a finished slab overlaps the next tiles'
forward passes instead of queueing behind them on the default stream. A tensor made on the tile thread's stream is
then handed over with a :class:`Handoff`: the export's stream waits for the work that made it, and the caching
allocator is told the export's stream uses it (so its memory is not given to the next tiles while the export still
reads it). On the CPU (and MPS) every function here does nothing, and the same code runs: the CPU tests cover it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class Handoff:
    """A tensor and, on CUDA, the event recorded after the work that made it on the producer's stream."""

    tensor: torch.Tensor
    ready: torch.cuda.Event | None

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Handoff:
        """Mark ``tensor`` (on the producer's thread) as ready once the work queued so far on its stream is done."""
        if tensor.device.type != "cuda":
            return cls(tensor, None)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(tensor.device))
        return cls(tensor, event)

    def receive(self) -> torch.Tensor:
        """The tensor, for use on the consumer's current stream: that stream waits for the producer's work, and the
        allocator keeps the tensor's memory until that stream is done with it."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.tensor.device)
            stream.wait_event(self.ready)
            self.tensor.record_stream(stream)
        return self.tensor


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Run the block's device work on a new CUDA stream of ``device`` (nothing changes elsewhere)."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.stream(torch.cuda.Stream(device)):
        yield

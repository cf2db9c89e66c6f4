"""The hand-over of finished rows from the sliding window's thread to the export thread (engine/runtime/side_stream):
the very tensor on the CPU, and on CUDA (where a GPU is present) a second stream that waits for the producer."""
from __future__ import annotations

import threading

import pytest
import torch
from tilewise.engine.runtime.side_stream import Handoff, side_stream


def test_on_the_cpu_the_export_thread_gets_the_very_tensor_and_nothing_waits() -> None:
    rows = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    handoff = Handoff.of(rows)
    assert handoff.ready is None
    received: list[torch.Tensor] = []

    def consume() -> None:
        with side_stream(rows.device):
            received.append(handoff.receive())

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join()
    assert received[0].data_ptr() == rows.data_ptr(), "handed over without a copy"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on the CI machine)")
def test_on_cuda_the_export_stream_waits_for_the_rows_made_on_the_tile_stream() -> None:
    device = torch.device("cuda")
    big = torch.randn(4096, 4096, device=device)
    rows = (big @ big).sum(0)  # queued on the tile thread's stream, maybe not done yet
    expected = rows.cpu()
    handoff = Handoff.of(rows)
    results: list[torch.Tensor] = []

    def consume() -> None:
        with side_stream(device):
            assert torch.cuda.current_stream(device) != torch.cuda.default_stream(device)
            results.append((handoff.receive() * 2).cpu())

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join()
    assert torch.equal(results[0], expected * 2)

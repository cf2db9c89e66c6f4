"""The machine's measured peak for convolutions: a short micro-benchmark of large 3D convolutions in a backend and
precision, the best rate kept per machine, so ``tilewise bench`` can say how far a sliding window is from what the
hardware does at its best (the share of peak).

"Peak" here is measured, not the data sheet's number: the best rate of a few convolutions shaped like a U-Net's
middle layers (3 x 3 x 3 kernels, many channels), run where the network runs, in the same precision.
"""
from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..runtime.cache_dir import user_cache_dir, write_record
from ..runtime.devices import PRECISIONS

CACHE_FILE = "convolution_peak.json"
REPEATS = 3
SHAPES = ((32, 64), (64, 40), (128, 24))
"""(channels in = out, edge of the cubic volume): a U-Net's early, middle and deep layers, each 3 x 3 x 3."""


@dataclass(frozen=True)
class PeakKey:
    """What a measured peak depends on: the machine, the backend, its device ('cpu', 'cuda:0'; OpenVINO's own
    name for other OpenVINO devices) and precision, the threads."""

    backend: str
    device: str
    precision: str
    threads: int

    def text(self) -> str:
        """The key as stored in the cache file (the processor's name first)."""
        return f"{processor_name()}|{self.backend}|{self.device}|{self.precision}|{self.threads} threads"


def processor_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform says), or the CUDA card's."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def convolution_flops(channels: int, edge: int) -> int:
    """Operations of one 3 x 3 x 3 convolution, ``channels`` in and out, on an ``edge``-cubed volume (padded)."""
    return 2 * channels * channels * 27 * edge**3


def _best_seconds(run: Callable[[], object]) -> float:
    run()  # the first call allocates and picks kernels
    best = math.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _torch_rate(device: torch.device, precision: str, channels: int, edge: int) -> float:
    dtype = PRECISIONS[precision]
    volume = torch.randn(1, channels, edge, edge, edge, device=device)
    weights = torch.randn(channels, channels, 3, 3, 3, device=device)

    def run() -> None:
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.no_grad(), autocast:
            torch.nn.functional.conv3d(volume, weights, padding=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return convolution_flops(channels, edge) / _best_seconds(run)


def _openvino_rate(device: str, precision: str, threads: int, channels: int, edge: int) -> float:
    """OpenVINO's rate on ``device`` (our name: 'cpu', else OpenVINO's, e.g. 'GPU.0')."""
    import openvino as ov
    import openvino.opset13 as ops

    from .openvino_backend import PRECISION_HINTS

    given = ops.parameter([1, channels, edge, edge, edge], np.float32)
    weights = ops.constant(np.random.default_rng(0).standard_normal((channels, channels, 3, 3, 3), np.float32))
    produced = ops.convolution(given, weights, [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if device == "cpu":
        config["INFERENCE_NUM_THREADS"] = threads
    ov_device = "CPU" if device == "cpu" else device
    compiled = ov.Core().compile_model(ov.Model([produced], [given]), ov_device, config)
    request = compiled.create_infer_request()
    volume = np.random.default_rng(1).standard_normal((1, channels, edge, edge, edge), np.float32)
    return convolution_flops(channels, edge) / _best_seconds(lambda: request.infer({0: volume}))


def measure_peak(key: PeakKey) -> float:
    """The best convolution rate (operations per second) over :data:`SHAPES`, measured now (a few seconds)."""
    rates = []
    for channels, edge in SHAPES:
        if key.backend == "openvino":
            rates.append(_openvino_rate(key.device, key.precision, key.threads, channels, edge))
        else:
            rates.append(_torch_rate(torch.device(key.device), key.precision, channels, edge))
    return max(rates)


def peak_flops(key: PeakKey, cache_dir: Path | None = None) -> float:
    """The machine's convolution peak for ``key`` (operations per second): measured now (a few seconds) and kept in
    the user's cache folder as the best rate seen on this machine, so a measurement on a busy machine does not lower
    it."""
    path = (cache_dir or user_cache_dir()) / CACHE_FILE
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    best = max(measure_peak(key), float(cached.get(key.text(), 0.0)))
    cached[key.text()] = best
    write_record(path, cached)  # a full or read-only cache folder: the bench still reports the rate measured now
    return best

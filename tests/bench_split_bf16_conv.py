"""Could an fp32 convolution run as bf16 products on AMX at fp32 accuracy? ``python tests/bench_split_bf16_conv.py``.

One 3x3x3 convolution, 32 -> 32 channels on an 80³ tile (the size of the bench network's costliest layers), three
ways in OpenVINO on the CPU: plain f32; plain bf16; and split, where input and weights are each cut into a bf16 high
part and a bf16 low part and the convolution is computed as hi x hi + lo x hi + hi x lo in one bf16 convolution
over the three stacked inputs (float32 accumulation). Prints the time per run (with the layout conversions around a
lone layer), the convolution's own time (OpenVINO's counters) and the largest error relative to the largest output,
against float32 and against a float64 PyTorch reference. The README's Benchmarks section says
why the engine does not use the split form (in a whole network OpenVINO 2026.4 computes the layers between the
convolutions in bf16 too). Not part of the test suite (timing claims belong in benchmarks).
"""
from __future__ import annotations

import time

import numpy as np
import openvino
import openvino.opset13 as ops
import torch

CHANNELS, SIDE, RUNS = 32, 80, 5


def to_bf16(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the nearest bf16 (ties to even), kept as float32."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def convolution(data: openvino.Output, weights: np.ndarray) -> openvino.Node:
    return ops.convolution(data, ops.constant(weights), [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])


def main() -> None:
    rng = np.random.default_rng(0)
    weights = (rng.normal(size=(CHANNELS, CHANNELS, 3, 3, 3)) / np.sqrt(CHANNELS * 27)).astype(np.float32)
    tile = rng.normal(size=(1, CHANNELS, SIDE, SIDE, SIDE)).astype(np.float32)
    shape = list(tile.shape)

    plain_input = ops.parameter(shape, np.float32)
    plain = openvino.Model([convolution(plain_input, weights)], [plain_input])

    split_input = ops.parameter(shape, np.float32)
    high = ops.convert(ops.convert(split_input, "bf16"), "f32")
    low = ops.subtract(split_input, high)
    weights_high = to_bf16(weights)
    weights_low = to_bf16(weights - weights_high)
    stacked = ops.concat([high, low, high], 1)
    split = openvino.Model([convolution(stacked, np.concatenate([weights_high, weights_high, weights_low], 1))],
                           [split_input])

    exact = torch.nn.functional.conv3d(torch.from_numpy(tile).double(), torch.from_numpy(weights).double(),
                                       padding=1).numpy()
    core = openvino.Core()
    reference = None
    for name, model, hint in (("f32", plain, "f32"), ("bf16", plain, "bf16"), ("split bf16 x3", split, "bf16")):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                     "PERF_COUNT": True})
        request = compiled.create_infer_request()
        output = request.infer({0: tile})[0].copy()
        started = time.perf_counter()
        for _ in range(RUNS):
            request.infer({0: tile})
        milliseconds = (time.perf_counter() - started) / RUNS * 1000
        convolution_ms = sum(info.real_time.total_seconds() * 1000 for info in request.profiling_info
                             if info.node_type == "Convolution")
        reference = output if reference is None else reference
        scale = np.abs(exact).max()
        print(f"{name:14s} {milliseconds:7.1f} ms per run, {convolution_ms:6.1f} ms in the convolution   error vs f32 {np.abs(output - reference).max() / scale:.2e}   "
              f"vs float64 {np.abs(output - exact).max() / scale:.2e}")


if __name__ == "__main__":
    main()

"""How much faster any fp32 forward pass could be than PyTorch's on this CPU:
``python tests/bench_fp32_ceiling.py -m MODEL_DIR [--runs 3]``.

For fold 0 of MODEL_DIR on one random tile of its patch size: the network's operations per pass (its convolutions'
multiply-adds, :func:`~tilewise.engine.backends.flops.forward_flops`), the best time of a pass in PyTorch fp32 (as
nnU-Net and TotalSegmentator run it on a CPU: eval mode, inference mode, the process's threads) and in OpenVINO fp32
(converted and compiled as the engine does), and the machine's measured fp32 convolution peak
(:mod:`~tilewise.engine.backends.peak`, the micro-benchmark ``tilewise bench`` reports against). The largest of the
peaks divided by PyTorch's rate bounds the speed-up of an fp32 forward pass over PyTorch's here, whatever computes it
(convolutions are nearly all of a pass's operations). Prints one JSON line. Not part of the test suite (timing
claims belong in benchmarks).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import openvino
import torch
from tilewise.engine.backends.flops import forward_flops
from tilewise.engine.backends.ov_convert import candidates, convert
from tilewise.engine.backends.peak import PeakKey, peak_flops, processor_name
from tilewise.engine.model.bundle import ModelBundle


def _best_seconds(run, runs: int) -> float:
    run()  # first run: allocations, kernel selection
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    threads = torch.get_num_threads()
    bundle = ModelBundle.load(str(args.model), folds=["0"])
    network = bundle.build_networks()[0].eval()
    shape = (1, bundle.image_channel_count, *bundle.patch_size)
    flops = forward_flops(network, shape)
    tile = torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    with torch.inference_mode():
        torch_seconds = _best_seconds(lambda: network(tile), args.runs)
    _, candidate, _ = next(candidates(network, shape))
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    request = openvino.Core().compile_model(convert(candidate, shape), "CPU", config).create_infer_request()
    openvino_seconds = _best_seconds(lambda: request.infer({0: tile.numpy()}), args.runs)
    peaks = {name: peak_flops(PeakKey(name, device, "fp32", threads)) for name, device in
             (("torch", "cpu"), ("openvino", "CPU"))}
    torch_rate, openvino_rate = flops / torch_seconds, flops / openvino_seconds
    print(json.dumps({
        "model": str(args.model), "processor": processor_name(), "threads": threads, "tile": list(shape),
        "gflop_per_pass": round(flops / 1e9, 1),
        "torch_fp32_s": round(torch_seconds, 2), "torch_gflops_per_s": round(torch_rate / 1e9, 1),
        "openvino_fp32_s": round(openvino_seconds, 2), "openvino_gflops_per_s": round(openvino_rate / 1e9, 1),
        "peak_gflops_per_s": {name: round(peak / 1e9, 1) for name, peak in peaks.items()},
        "openvino_over_torch": round(torch_seconds / openvino_seconds, 3),
        "ceiling_over_torch": round(max(peaks.values()) / torch_rate, 3),
    }), flush=True)


if __name__ == "__main__":
    main()

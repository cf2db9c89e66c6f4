"""Where an OpenVINO forward pass spends its time, per kind of layer, and how close its convolutions run to the
CPU's arithmetic peak: ``python tests/bench_openvino_layers.py -m MODEL_DIR [--precision fp32|bf16]``.

Converts fold 0 the way the engine does (pooled instance norms), compiles it as the engine does (latency hint, the
process's torch thread count), runs one random tile a few times with OpenVINO's per-layer counters on and prints
milliseconds per layer type, the slowest layers, and each 3-D convolution's GFLOP/s (2 x multiply-adds / time).
Not part of the test suite (timing claims belong in benchmarks).
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import openvino
import torch
from tilewise.engine.backends.ov_convert import candidates, convert
from tilewise.engine.model.bundle import ModelBundle

_HINTS = {"fp32": "f32", "bf16": "bf16"}


def _convolution_flops(model: openvino.Model) -> dict[str, float]:
    """2 x multiply-adds of each Convolution of ``model``, by its friendly name."""
    flops = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            out = list(op.get_output_shape(0))
            weights = list(op.get_input_shape(1))  # (out channels, in channels, *kernel)
            flops[op.get_friendly_name()] = 2.0 * float(np.prod(out)) * float(np.prod(weights[1:]))
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True, type=Path)
    parser.add_argument("--precision", default="fp32", choices=sorted(_HINTS))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    bundle = ModelBundle.load(str(args.model), folds=["0"])
    network = bundle.build_networks()[0]
    shape = (1, bundle.image_channel_count, *bundle.patch_size)
    _, candidate, _ = next(candidates(network, shape))
    model = convert(candidate, shape)
    flops = _convolution_flops(model)
    config = {"INFERENCE_PRECISION_HINT": _HINTS[args.precision], "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERF_COUNT": True}
    request = openvino.Core().compile_model(model, "CPU", config).create_infer_request()
    tile = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    request.infer({0: tile})  # first run: allocations
    started = time.perf_counter()
    for _ in range(args.runs):
        request.infer({0: tile})
    wall_ms = (time.perf_counter() - started) / args.runs * 1000
    by_type: collections.Counter[str] = collections.Counter()
    convolutions = []
    for info in request.profiling_info:  # counters of the last run
        ms = info.real_time.total_seconds() * 1000
        by_type[f"{info.node_type} ({info.exec_type})"] += ms
        name = info.node_name.split("/")[0] + "/" + info.node_name.split("/")[-1]
        matched = [f for n, f in flops.items() if n == info.node_name or info.node_name.startswith(n)]
        if info.node_type == "Convolution" and matched and ms > 0:
            convolutions.append((ms, matched[0] / ms / 1e6, name))
    total_flop = sum(flops.values())
    print(f"{args.precision}: {wall_ms:.0f} ms per {'x'.join(map(str, shape[2:]))} tile (wall, mean of {args.runs}); "
          f"{total_flop / 1e9:.0f} GFLOP of convolutions per tile")
    for kind, ms in by_type.most_common(8):
        print(f"  {ms:7.1f} ms  {kind}")
    for ms, rate, name in sorted(convolutions, reverse=True)[:6]:
        print(f"  {ms:7.1f} ms  {rate:6.0f} GFLOP/s  {name}")
    conv_ms = sum(ms for kind, ms in by_type.items() if kind.startswith("Convolution"))
    print(json.dumps({"precision": args.precision, "wall_ms": round(wall_ms, 1), "convolution_ms": round(conv_ms, 1),
                      "convolution_gflop": round(total_flop / 1e9, 1),
                      "convolution_gflop_per_s": round(total_flop / conv_ms / 1e6, 1) if conv_ms else None}))


if __name__ == "__main__":
    main()

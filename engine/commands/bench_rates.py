"""How far a sliding window is from the machine's limit: operations per tile, achieved operations per second, and
their share of the measured convolution peak, for Tilewise and for nnU-Net in the same ``tilewise bench`` run."""
from __future__ import annotations

import torch

from ..backends.flops import forward_flops
from ..backends.peak import PeakKey, peak_flops, processor_name
from ..model.bundle import ModelBundle

NNUNET_TIMINGS_VARIABLE = "TILEWISE_BENCH_NNUNET_TIMINGS"
"""The file nnU-Net's timed sliding window appends its seconds to (one line per fold's sliding window)."""

NNUNET_ENTRY = f"""
import json, os, time
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor, predict_entry_point_modelfolder
untimed = nnUNetPredictor.predict_sliding_window_return_logits
def timed(self, *args, **kwargs):
    start = time.perf_counter()
    logits = untimed(self, *args, **kwargs)
    if logits.device.type == "cuda":
        import torch
        torch.cuda.synchronize(logits.device)
    path = os.environ.get("{NNUNET_TIMINGS_VARIABLE}")
    if path:  # tilewise bench asks for the timing; bench-batch does not
        with open(path, "a") as timings:
            timings.write(json.dumps(time.perf_counter() - start) + "\\n")
    return logits
nnUNetPredictor.predict_sliding_window_return_logits = timed
predict_entry_point_modelfolder()
"""
"""nnU-Net's own command-line entry, with its sliding window timed (nnU-Net reports no stage times of its own)."""


def _rate_fields(prefix: str, passes: int, flops_per_pass: int, seconds: float, peak: float) -> dict:
    rate = passes * flops_per_pass / max(seconds, 1e-9)
    return {f"{prefix}_sliding_window_s": round(seconds, 3), f"{prefix}_gflops_per_s": round(rate / 1e9, 2),
            f"{prefix}_peak_gflops_per_s": round(peak / 1e9, 2), f"{prefix}_share_of_peak": round(rate / peak, 4)}


def ours_rates(bundle: ModelBundle, report: dict, case: dict) -> dict:
    """Operations per forward pass and Tilewise's achieved rate against the peak of its own backend and precision
    (empty for a cascade, whose two stages are different networks)."""
    if bundle.previous_stage_name is not None or case["tiles"] == 0:
        return {}
    flops = forward_flops(bundle.build_networks()[0], (1, bundle.num_input_channels, *bundle.patch_size))
    key = PeakKey(report["backend"], report["device"], report["precision"], torch.get_num_threads())
    fields = {"processor": processor_name(), "flop_per_forward_pass": flops,
              "gflop_per_forward_pass": round(flops / 1e9, 3), "passes_per_tile": case["forward_passes"] // case["tiles"]}
    return fields | _rate_fields("ours", case["forward_passes"], flops, case["timings"]["sliding_window"],
                                 peak_flops(key))


def nnunet_rates(summary: dict, case: dict, device: str, sliding_seconds: list[float]) -> dict:
    """nnU-Net's achieved rate: every tile (it skips none) times the same passes per tile, over its timed sliding
    windows, against the peak of PyTorch in its precision (fp32 on a CPU, fp16 autocast on CUDA)."""
    if "flop_per_forward_pass" not in summary or not sliding_seconds:
        return {}
    tiles = case["tiles"] + case.get("tiles_skipped", 0)
    passes = tiles * summary["passes_per_tile"]
    precision = "fp16" if device.startswith("cuda") else "fp32"
    peak = peak_flops(PeakKey("torch", device, precision, torch.get_num_threads()))
    return _rate_fields("nnunet", passes, summary["flop_per_forward_pass"], sum(sliding_seconds), peak)

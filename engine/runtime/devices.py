"""Choosing the compute device and the precision it runs fast."""
from __future__ import annotations

import torch

from ..errors import TilewiseError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' -> CUDA if present, else Apple MPS, else CPU. Asking for a missing device is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TilewiseError("-device", "CUDA was requested but no CUDA GPU is available to this torch build")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TilewiseError("-device", "MPS was requested but Apple Metal is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise TilewiseError("-device", f"unsupported device '{name}' (use cpu, cuda or mps)")
    return device


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn 'reduced' into the fastest reduced precision the device supports ('fp32' if none)."""
    if precision in PRECISIONS:
        return precision
    if precision != "reduced":
        raise TilewiseError("--precision", f"unknown precision '{precision}' (use fp32, fp16, bf16 or reduced)")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def default_batch_size(device: torch.device) -> int:
    """Tiles per forward pass when the preset leaves it to us: 1 on CPU/MPS, more on large GPUs."""
    if device.type != "cuda":
        return 1
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return 4 if free_bytes > 20 * 2**30 else 2 if free_bytes > 8 * 2**30 else 1


def describe_device(device: torch.device) -> str:
    """Human-readable device name, e.g. 'cuda (NVIDIA H200, 139 GiB)' or 'cpu (8 threads)'."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"cuda ({properties.name}, {properties.total_memory / 2**30:.0f} GiB)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads{', bf16' if cpu_supports_bf16() else ''})"
    return device.type

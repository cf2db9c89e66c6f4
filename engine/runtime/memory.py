"""Memory facts and failures: what the host has free, freeing device caches, and recognising out-of-memory."""
from __future__ import annotations

import gc
import os

import torch

# Messages by which libraries report an allocation failure: CUDA and MPS ("out of memory"), PyTorch's CPU allocator
# ("DefaultCPUAllocator: not enough memory" on Windows, "can't allocate memory" on Linux), numpy ("Unable to allocate")
# and OpenVINO's CPU plugin ("Failed to allocate", "std::bad_alloc").
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory", "unable to allocate",
                           "failed to allocate", "bad_alloc", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure, from whichever library raised it (the one rule used everywhere)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, (RuntimeError, OSError)) and any(m in str(error).lower() for m in _OUT_OF_MEMORY_MESSAGES)


def free_device_memory(device: torch.device) -> None:
    """Return cached device memory to the driver (CUDA/MPS); collects garbage first."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def available_host_bytes() -> int:
    """Host memory free for this process now (free pages; a very large number where the OS cannot tell)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62

"""Memory facts and failures: what the host has free, freeing device caches, and recognising out-of-memory."""
from __future__ import annotations

import gc
import os
from pathlib import Path

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


def _free_pages_bytes() -> int:
    """Free physical pages (a very large number where the OS cannot tell): the fallback of the probe below."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62


def _linux_available() -> int | None:
    """MemAvailable from /proc/meminfo, lowered to what a cgroup (container) limit leaves."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                text = limit.read().strip()
                if text != "max":
                    available = min(available, max(int(text) - int(usage.read().strip()), 0))
            break
        except (OSError, ValueError):
            continue
    return available


def _windows_available() -> int | None:
    """ullAvailPhys from GlobalMemoryStatusEx."""
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    return int(status.ullAvailPhys)


def _macos_available() -> int | None:
    """Free + inactive + purgeable pages (what Activity Monitor counts as available), from vm_stat."""
    import subprocess

    try:
        text = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    page = int(text.split("page size of", 1)[1].split()[0]) if "page size of" in text else 4096
    counts = {line.split(":")[0].strip(): int(line.split(":")[1].strip().rstrip(".") or 0)
              for line in text.splitlines()[1:] if ":" in line and line.split(":")[1].strip().rstrip(".").isdigit()}
    pages = sum(counts.get(k, 0) for k in ("Pages free", "Pages inactive", "Pages purgeable", "Pages speculative"))
    return pages * page if pages else None


def host_available_bytes() -> int:
    """Memory this process can still get without swapping: MemAvailable (and a cgroup limit) on Linux, the OS's
    available physical memory on Windows and macOS; free pages where none of those can be read."""
    import sys

    probe = {"linux": _linux_available, "win32": _windows_available, "darwin": _macos_available}.get(sys.platform)
    measured = probe() if probe is not None else None
    return measured if measured is not None else _free_pages_bytes()


def device_available_bytes(device: torch.device) -> int:
    """Memory free for tensors on ``device``: for CUDA the driver's free memory plus what torch's cache holds unused,
    for MPS the recommended working set minus what is allocated, for the CPU :func:`host_available_bytes`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return host_available_bytes()


def high_water_kb(pid: int | str = "self") -> int | None:
    """A process's peak resident set size since its last exec (Linux ``VmHWM``), in kB; None where /proc does not
    say or the process is gone. Unlike ``ru_maxrss`` it does not count the parent the process was forked from."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size so far (None where the OS does not say: Windows)."""
    high_water = high_water_kb()
    if high_water is not None:
        return high_water * 1024
    try:
        import resource
        import sys
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux kB


def record_peak(peaks: dict[str, float], stage: str) -> None:
    """Note in ``peaks`` this process's peak resident memory (MiB) at the end of ``stage``, where the OS says it."""
    peak = peak_rss_bytes()
    if peak is not None:
        peaks[stage] = round(peak / 2**20, 1)

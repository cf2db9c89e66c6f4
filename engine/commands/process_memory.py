"""A command's wall time and peak memory summed over all its processes (nnU-Net forks preprocessing and export
workers, so the largest single process understates what it needs)."""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..runtime.memory import high_water_kb

SAMPLE_INTERVAL_S = 0.05
PSS_INTERVAL_S = 1.0
"""How often each process's proportional set size is read. Reading ``smaps_rollup`` walks the process's page tables
under its memory lock: read every 50 ms it slowed ``tilewise batch``'s sliding window from 23.9-27.7 s to
32.1-33.1 s per case (2026-12-02, 3 bench CT cases), so between these reads the sampler uses the resident size
(``statm``, which costs the process nothing) less the shared part measured at the last read."""
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


@dataclass
class Timed:
    """Wall time and memory of one finished command."""

    seconds: float
    peak_mb: float
    """Peak over time of the memory summed over the process and its descendants (proportional set size on Linux,
    so pages that forked workers share are counted once; resident set size elsewhere)."""
    peak_single_mb: float
    """Peak resident set size of the largest single process (the kernel's high-water mark, sampled)."""
    returncode: int
    stderr: str


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def _proportional_kb(pid: int) -> int | None:
    """Pss (or Rss when the kernel has no rollup) of one process, in kB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return int(fields.get("Pss", fields.get("Rss", "0 kB")).split()[0])
    except (OSError, ValueError):
        return None


def _resident_kb(pid: int) -> int | None:
    """Resident set size of one process, in kB, from ``statm``; None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return None


class TreeMemory:
    """The memory of a process and its descendants, sampled often and cheaply: per process the resident size less
    its shared part (resident minus proportional size), which is re-measured every :data:`PSS_INTERVAL_S`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._shared_kb: dict[int, int] = {}
        self._measured_at: dict[int, float] = {}
        self.largest_single_mb = 0.0
        """The largest peak resident set size of any one process of the tree seen so far."""

    def sample_mb(self) -> float:
        """The tree's memory now, in MB (proportional set sizes, estimated between their reads)."""
        if not Path("/proc/self/statm").exists():
            return _psutil_tree_mb(self.pid)
        total_kb, now = 0, time.monotonic()
        for pid in _tree(self.pid):
            resident = _resident_kb(pid)
            if resident is None:
                continue
            if now - self._measured_at.get(pid, -PSS_INTERVAL_S) >= PSS_INTERVAL_S:
                proportional = _proportional_kb(pid)
                if proportional is not None:
                    self._shared_kb[pid] = max(0, resident - proportional)
                    self._measured_at[pid] = now
            total_kb += max(0, resident - self._shared_kb.get(pid, 0))
            self.largest_single_mb = max(self.largest_single_mb, (high_water_kb(pid) or 0) / 1024)
        return total_kb / 1024


def _psutil_tree_mb(pid: int) -> float:
    """Resident set sizes summed over the tree (systems without /proc)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


def run_timed(command: list[str], env: dict[str, str] | None = None) -> Timed:
    """Run ``command`` to completion, sampling its process tree's memory every :data:`SAMPLE_INTERVAL_S`."""
    started = time.perf_counter()
    peak = [0.0]
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        done = threading.Event()

        memory = TreeMemory(process.pid)

        def sample() -> None:
            while not done.wait(SAMPLE_INTERVAL_S):
                peak[0] = max(peak[0], memory.sample_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            single = usage.ru_maxrss / 1024  # kB on Linux; counts the parent's size from before exec
        else:
            process.wait()
            single = 0.0
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        if Path("/proc/self/status").exists():
            single = memory.largest_single_mb
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Timed(seconds, max(peak[0], single), single, process.returncode, text)

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

SAMPLE_INTERVAL_S = 0.05


@dataclass
class Timed:
    """Wall time and memory of one finished command."""

    seconds: float
    peak_mb: float
    """Peak over time of the memory summed over the process and its descendants (proportional set size on Linux,
    so pages that forked workers share are counted once; resident set size elsewhere)."""
    peak_single_mb: float
    """Peak resident set size of the largest single process (the operating system's own accounting)."""
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


def _proportional_kb(pid: int) -> int:
    """Pss (or Rss when the kernel has no rollup) of one process, in kB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return int(fields.get("Pss", fields.get("Rss", "0 kB")).split()[0])
    except (OSError, ValueError):
        return 0


def _sum_tree_mb(pid: int) -> float:
    if Path("/proc/self/smaps_rollup").exists():
        return sum(_proportional_kb(p) for p in _tree(pid)) / 1024
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

        def sample() -> None:
            while not done.wait(SAMPLE_INTERVAL_S):
                peak[0] = max(peak[0], _sum_tree_mb(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            single = usage.ru_maxrss / 1024
        else:
            process.wait()
            single = 0.0
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Timed(seconds, max(peak[0], single), single, process.returncode, text)

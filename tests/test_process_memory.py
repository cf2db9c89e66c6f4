"""The benchmarks' memory sampler: proportional sizes over a process tree, so pages forked workers share count once,
and a peak that a short-lived allocation reaches between the sampler's expensive reads is still seen."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from tilewise.engine.commands import process_memory
from tilewise.engine.commands.process_memory import TreeMemory, run_timed
from tilewise.engine.runtime.memory import high_water_kb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="proportional sizes need Linux /proc")

SHARED_MB = 300
FORKED = f"""
import os, sys, time
block = bytearray(os.urandom(1 << 20)) * {SHARED_MB}  # touched: resident in the parent
if os.fork() == 0:
    time.sleep(30)  # the child shares every page of block copy-on-write
    os._exit(0)
print("ready", flush=True)
time.sleep(30)
"""


def test_forked_workers_share_pages_once() -> None:
    process = subprocess.Popen([sys.executable, "-c", FORKED], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let the child start
        memory = TreeMemory(process.pid)
        pids = process_memory._tree(process.pid)
        assert len(pids) == 2
        resident = sum(process_memory._resident_kb(pid) for pid in pids) / 1024
        measured = memory.sample_mb()
        assert resident > 2 * SHARED_MB  # both processes map the block
        assert SHARED_MB <= measured < SHARED_MB + 120, "the shared block counts once, plus two interpreters"
        again = memory.sample_mb()  # estimated from statm, no new smaps read
        assert again == pytest.approx(measured, abs=5)
    finally:
        for pid in reversed(process_memory._tree(process.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        process.wait()
        process.stdout.close()


def test_a_peak_between_proportional_reads_is_seen(monkeypatch) -> None:
    monkeypatch.setattr(process_memory, "PSS_INTERVAL_S", 60.0)  # one smaps read at the start, then statm only
    script = ("import time; time.sleep(0.5); block = b'x' * (400 << 20);"
              " time.sleep(0.5); del block; time.sleep(0.5)")
    timed = run_timed([sys.executable, "-c", script])
    assert timed.returncode == 0
    assert timed.peak_mb >= 400, "the 400 MB allocation came and went between proportional reads"
    assert timed.peak_mb < 400 + 100
    assert 400 <= timed.peak_single_mb < 400 + 100, "the child's own high-water mark, not this test process's size"


def test_a_childs_own_peak_does_not_count_the_parent_it_was_forked_from() -> None:
    ballast = bytearray(os.urandom(1 << 20)) * 700  # this process is now at least 700 MB resident
    parent_mb = high_water_kb(os.getpid()) / 1024
    script = "from tilewise.engine.runtime.memory import peak_rss_bytes; print(peak_rss_bytes())"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    child_mb = int(child.stdout.split()[-1]) / 2**20
    assert parent_mb > 700 and len(ballast) == 700 << 20
    assert 20 < child_mb < parent_mb - 300, "ru_maxrss would have reported at least the parent's size"

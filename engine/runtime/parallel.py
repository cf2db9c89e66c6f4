"""Splitting array work into slabs and running it on a thread pool (numpy and scipy release the GIL)."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def slabs(length: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into at most ``parts`` contiguous, non-empty (start, stop) pieces."""
    parts = max(1, min(parts, length))
    edges = np.linspace(0, length, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_all(pool: ThreadPoolExecutor, jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` on ``pool``, wait for all of them and re-raise the first error."""
    for future in [pool.submit(job) for job in jobs]:
        future.result()

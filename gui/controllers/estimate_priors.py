"""What the Speed box shows before anything is timed, and how it keeps the estimates honest on a busy computer.

- :func:`plans_grid`: the model's grid and tile from its ``plans.json`` (no weights loaded), so tiles can be counted
  as soon as the model and the image are known.
- :func:`prior_pass_seconds`: a wide range for one forward pass until the first fold has been timed here (per
  million voxels of the tile, by where and with what engine the network runs).
- :func:`between`: one :class:`Estimate` whose stages run from a fast case to a slow one (a range).
- :func:`in_preset_order`: a costlier preset is never shown as quicker than a cheaper one.
- :func:`machine_load` and :func:`widened`: on a computer busier than its cores, the upper end grows with the load.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tilewise.engine import Estimate, ModelGrid, Span

PRESET_ORDER = ("preview", "fast", "balanced", "reference")
"""Cheapest first: each preset does at least the work of the one before it."""

PASS_SECONDS_PER_MVOXEL = {"gpu": Span(0.005, 0.2), "openvino": Span(0.1, 3.0), "torch": Span(0.5, 10.0)}
"""Seconds of one forward pass per million voxels of the tile, before a pass has been timed here. On the project's
2-core AMD EPYC (load 2-12) the demo model (64^3 tile, features 8-96) took 0.17-0.38 s per pass with OpenVINO and
1.4-2.6 s with PyTorch; nnU-Net's 3d_fullres network (80^3, features 32-320) 0.27-1.75 s."""


@dataclass(frozen=True)
class TaskNote:
    """A TotalSegmentator task is chosen: no estimate yet, its own tile step and no mirroring; ``last_s`` is how long
    its last run took in this session (None: not run yet)."""

    name: str
    step: float
    last_s: float | None = None


@dataclass(frozen=True)
class ShownEstimates:
    """What the Speed box shows: per preset the total (in preset order, widened when the computer is busy), the
    estimate for the chosen settings and its total, a status when there is none, and the load when busy."""

    totals: dict[str, Span]
    chosen: Estimate | None = None
    chosen_total: Span | None = None
    status: str = ""
    load: tuple[float, int] | None = None
    """(load average, cores) when the computer is busier than its cores; None otherwise."""
    task: TaskNote | None = None
    """Set when a TotalSegmentator task is chosen (then nothing is estimated)."""


def plans_grid(model_dir: Path, configuration: str) -> ModelGrid | None:
    """The grid and tile of ``configuration`` in the model's ``plans.json`` (every axis mirrored, as nnU-Net's
    default trainer does); a folder not named after its configuration (the checkpoint names it) gets 3d_fullres,
    else the first configuration. None when the folder has no readable plans."""
    try:
        plans = json.loads((Path(model_dir) / "plans.json").read_text(encoding="utf-8"))
        configurations = plans["configurations"]
        config = configurations.get(configuration) or configurations.get("3d_fullres") or \
            next(iter(configurations.values()))
        patch = tuple(int(p) for p in config["patch_size"])
        spacing = tuple(float(s) for s in config["spacing"])
        transpose = tuple(int(a) for a in plans.get("transpose_forward", range(len(spacing))))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return None
    return ModelGrid(transpose, spacing, patch, tuple(range(len(patch))))


def runs_on(device: str, backend: str) -> str:
    """'gpu', 'openvino' or 'torch': what decides the speed of a pass for a run on ``device`` with ``backend``."""
    if device in ("cuda", "mps"):
        return "gpu"
    if device == "auto":
        import torch

        if torch.cuda.is_available() or torch.backends.mps.is_available():
            return "gpu"
    if backend == "openvino" or (backend == "auto" and importlib.util.find_spec("openvino") is not None):
        return "openvino"
    return "torch"


def prior_pass_seconds(grid: ModelGrid, device: str, backend: str) -> Span:
    """A wide range for one forward pass of ``grid``'s tile, until it has been timed on this computer."""
    return PASS_SECONDS_PER_MVOXEL[runs_on(device, backend)] * (math.prod(grid.patch_size) / 1e6)


def between(fast: Estimate, slow: Estimate) -> Estimate:
    """One estimate from ``fast`` (every stage at its low end) to ``slow`` (every stage at its high end)."""
    stages = {name: Span(fast.stages[name].low, slow.stages[name].high) for name in fast.stages}
    return Estimate(fast.tiles, fast.passes_per_tile, slow.conversions, stages)


def in_preset_order(totals: dict[str, Span]) -> dict[str, Span]:
    """``totals`` where each preset of :data:`PRESET_ORDER` takes at least as long as the one before it (a cheaper
    preset may have to load its model while a costlier one is loaded already; the costlier one is then shown as
    long as the cheaper one, never shorter)."""
    ordered = dict(totals)
    previous: Span | None = None
    for name in PRESET_ORDER:
        span = ordered.get(name)
        if span is None:
            continue
        if previous is not None:
            span = Span(max(span.low, previous.low), max(span.high, previous.high))
            ordered[name] = span
        previous = span
    return ordered


def cores() -> int:
    """The processor cores this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def machine_load() -> tuple[float, int]:
    """(the load average over the last minute, the cores this process may use); load 0 where the system has none."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        load = 0.0
    return float(load), cores()


def is_busy(load: tuple[float, int]) -> bool:
    """True when more work waits for the processor than it has cores."""
    return load[0] > load[1]


def widened(span: Span, load: tuple[float, int]) -> Span:
    """``span`` with its upper end scaled by how far the load exceeds the cores (unchanged when not busy)."""
    if not is_busy(load):
        return span
    return Span(span.low, span.high * load[0] / load[1])

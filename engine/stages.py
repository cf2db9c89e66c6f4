"""A case between the :class:`~tilewise.engine.Predictor`'s stages, and the pieces those stages share.

:meth:`Predictor.predict` is the stages in a row: ``plan_case`` (check the input, plan its memory), ``preprocess_case``
(onto the network grid, the body mask), ``run_tiles`` (the sliding window, logits kept on the case) and ``finish``
(export to the input grid, the :class:`~tilewise.engine.Result`). ``tilewise batch`` runs the same calls on
different threads, so both write the same bytes. A :class:`PreparedCase` carries what the next stage needs and
drops what the previous one no longer does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .data.volume import Volume
from .errors import OutOfMemoryError
from .events import CancelToken
from .model.bundle import ModelBundle
from .postprocess.export import export_logits
from .preprocess.body_mask import body_mask
from .preprocess.pipeline import Preprocessed
from .runtime.memory import (
    device_available_bytes,
    free_device_memory,
    host_available_bytes,
    is_out_of_memory,
    peak_rss_bytes,
)
from .runtime.memory_plan import MemoryPlan
from .sliding.accumulators import Placement
from .sliding.plan import Tile


@dataclass(frozen=True)
class MemoryBudget:
    """The memory a case is planned against: host and compute-device bytes available (a batch takes them once,
    when it starts)."""

    host_bytes: int
    device_bytes: int

    @classmethod
    def available_now(cls, device: torch.device) -> MemoryBudget:
        """The host's and ``device``'s available memory at this moment."""
        return cls(host_available_bytes(), device_available_bytes(device))


@dataclass
class PreparedCase:
    """One case between the predictor's stages: its volume and memory plan, then its network-grid data, then its
    logits; the seconds and the peak memory of each stage, the tile counts and the notes for its result."""

    volume: Volume
    plan: MemoryPlan | None
    """None with ``nnunet_exact`` (nnU-Net's sums have one fixed placement)."""
    order: list[Placement]
    """The placements the sums may take, the plan's choice first (empty with ``nnunet_exact``)."""
    prepared: Preprocessed | None = None
    skip_tile: Callable[[Tile], bool] | None = None
    logits: torch.Tensor | None = None
    tiles: int = 0
    forward_passes: int = 0
    tiles_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    """This process's peak resident memory in MiB at the end of each stage (empty where the OS does not say)."""

    @property
    def planned_peaks(self) -> tuple[int, int]:
        """The planned (host, device) peak in bytes ((0, 0) when unplanned), for a batch's memory gate."""
        if self.plan is None:
            return 0, 0
        return self.plan.peak_host_bytes, self.plan.peak_device_bytes


def record_peak(peaks: dict[str, float], stage: str) -> None:
    """Note in ``peaks`` this process's peak resident memory (MiB) at the end of ``stage``, where the OS says it."""
    peak = peak_rss_bytes()
    if peak is not None:
        peaks[stage] = round(peak / 2**20, 1)


def empty_tile_test(prepared: Preprocessed) -> Callable[[Tile], bool] | None:
    """Whether a tile of ``prepared`` holds no body voxel (to skip it), or None without nnU-Net's nonzero mask."""
    if prepared.nonzero is None:
        return None
    mask = body_mask(prepared.data, prepared.nonzero)
    return lambda tile: not mask.touches(tile.box)


def export_with_fallback(logits: torch.Tensor, bundle: ModelBundle, properties: dict[str, Any],
                         with_probabilities: bool, slab_bytes: int, cancel: CancelToken | None,
                         device: torch.device, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) of ``logits`` on the input grid, slab by slab; when device memory runs out,
    again on the host (with a note). Raises :class:`OutOfMemoryError` when host memory runs out."""
    try:
        exported = export_logits(logits, bundle, properties, with_probabilities, slab_bytes, cancel)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        free_device_memory(device)
        if logits.device.type == "cpu":
            raise OutOfMemoryError("export", "out of memory while writing labels on the input grid; close other "
                                             "programs or use a machine with more memory") from None
        notes.append("device memory ran out during export: resampled on the host instead")
        exported = export_logits(logits.cpu(), bundle, properties, with_probabilities, slab_bytes, cancel)
    return exported.labels, exported.probabilities

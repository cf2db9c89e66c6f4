"""A case between the :class:`~tilewise.engine.Predictor`'s stages.

:meth:`Predictor.predict` is the stages in a row: ``plan_case`` (check the input, plan its memory), ``preprocess_case``
(onto the network grid, the body mask), ``run_tiles`` (the sliding window, logits kept on the case) and ``finish``
(export to the input grid, the :class:`~tilewise.engine.Result`). ``tilewise batch`` runs the same calls on
different threads, so both write the same bytes. A :class:`PreparedCase` carries what the next stage needs and
drops what the previous one no longer does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .data.volume import Volume
from .postprocess.streaming import StreamingExport
from .preprocess.pipeline import Preprocessed
from .runtime.memory_plan import MemoryPlan
from .sliding.accumulators import Placement
from .sliding.plan import Tile, plan_tiles


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
    """The averaged logits between the sliding window and export (None for a streaming case)."""
    export: StreamingExport | None = None
    """A streaming case's export, running beside its tiles and finished by ``finish``."""
    with_probabilities: bool = False
    """Whether a streaming case's export writes probabilities too (planned with them)."""
    with_uncertainty: bool = False
    """Whether the case was planned with the uncertainty map (a streaming case's export computes it only then)."""
    labels_path: Path | None = None
    """A streaming case's label file: its export writes the labels there slab by slab and publishes the file whole,
    instead of holding them (the result's ``labels`` is then None); set by ``tilewise predict`` and ``batch`` where
    :func:`~.streaming_stage.writes_labels_slab_wise` allows."""
    tiles: int = 0
    forward_passes: int = 0
    tiles_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    """This process's peak resident memory in MiB at the end of each stage (empty where the OS does not say)."""
    previous: PreparedCase | None = None
    """A cascade's first stage (the same volume through the low-res model), run before this one; else None."""
    previous_labels: np.ndarray | None = None
    """A cascade stage's previous-stage segmentation given with the case (nnU-Net's ``-prev_stage_predictions``), in
    the volume's voxel order: then no first stage runs."""

    @property
    def planned_peaks(self) -> tuple[int, int]:
        """The planned (host, device) peak in bytes ((0, 0) when unplanned), for a batch's memory gate; a cascade's
        is the larger of its two stages'."""
        own = (0, 0) if self.plan is None else (self.plan.peak_host_bytes, self.plan.peak_device_bytes)
        if self.previous is None:
            return own
        first = self.previous.planned_peaks
        return max(own[0], first[0]), max(own[1], first[1])

    def tiles_to_run(self, patch_size: tuple[int, ...], tile_step: float) -> int:
        """How many tiles a sliding window over the preprocessed case runs (those ``skip_tile`` names are not)."""
        assert self.prepared is not None, "preprocess first"
        tiles = plan_tiles(tuple(int(s) for s in self.prepared.data.shape[1:]), patch_size, tile_step)  # type: ignore[arg-type]
        return sum(1 for tile in tiles if self.skip_tile is None or not self.skip_tile(tile))

    def release_image(self) -> None:
        """Drop the volume's voxels once the network-grid input holds all the next stages need (the geometry, shape
        and sources stay): on a long CT the float32 image is the largest object left on the host (1.57 GB for
        512 x 512 x 1,500), and a caller that handed the volume over (``tilewise predict``, ``batch``) frees it."""
        volume = self.volume
        voxel_free = np.broadcast_to(np.zeros((), dtype=volume.array.dtype), volume.array.shape)
        self.volume = replace(volume, array=voxel_free)

    def note_previous(self, name: str) -> None:
        """The first stage's timings and peaks (so far) on this case, named ``name:stage``."""
        assert self.previous is not None
        self.timings.update({f"{name}:{stage}": seconds for stage, seconds in self.previous.timings.items()})
        self.peaks.update({f"{name}:{stage}": mib for stage, mib in self.previous.peaks.items()})

    def counts(self, name: str) -> tuple[int, int, int, list[str]]:
        """Tiles run, forward passes, tiles skipped and notes of this case and its first stage (notes named)."""
        first = self.previous
        if first is None:
            return self.tiles, self.forward_passes, self.tiles_skipped, list(self.notes)
        return (self.tiles + first.tiles, self.forward_passes + first.forward_passes,
                self.tiles_skipped + first.tiles_skipped, [f"{name}: {note}" for note in first.notes] + self.notes)

"""A case between the :class:`~tilewise.engine.Predictor`'s stages, and the pieces those stages share.

:meth:`Predictor.predict` is the stages in a row: ``plan_case`` (check the input, plan its memory), ``preprocess_case``
(onto the network grid, the body mask), ``run_tiles`` (the sliding window, logits kept on the case) and ``finish``
(export to the input grid, the :class:`~tilewise.engine.Result`). ``tilewise batch`` runs the same calls on
different threads, so both write the same bytes. A :class:`PreparedCase` carries what the next stage needs and
drops what the previous one no longer does.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .data.volume import Volume
from .errors import OutOfMemoryError
from .events import CancelToken, EventHandler, TileEvent
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
from .sliding.plan import Tile, plan_tiles


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
    previous: PreparedCase | None = None
    """A cascade's first stage (the same volume through the low-res model), run before this one; else None."""

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


def counted_events(on_event: EventHandler | None, before: int, total: int) -> EventHandler | None:
    """Tile events of one stage of a longer run, counted over the whole run: ``before`` tiles came earlier and
    ``total`` is every stage's (a cascade's two stages share one progress bar)."""
    if on_event is None:
        return None

    def forward(event: TileEvent) -> None:
        done = before + event.done
        rate = event.elapsed_s / max(event.done, 1)
        on_event(replace(event, done=done, total=total, eta_s=rate * (total - done)))

    return forward


def previous_stage_input(labels: np.ndarray, image: np.ndarray, prepared: Preprocessed,
                         bundle: ModelBundle) -> Preprocessed:
    """``prepared`` (a cascade stage's image on its network grid) with the previous stage's segmentation stacked on
    as nnU-Net's predictor stacks it: one channel per foreground label, on the same padded grid.

    ``labels`` is the previous stage's segmentation and ``image`` the image (channels first), both as the model's
    reader returns them (nnU-Net writes the low-res segmentation to a file and its preprocessor reads it back so).
    The steps are ``DefaultPreprocessor.run_case_npy``'s for a segmentation, with nnU-Net's own functions: transpose,
    crop to the image's nonzero box (-1 where the segmentation is background outside the filled nonzero mask), the
    plans' segmentation resampling, then ``convert_labelmap_to_one_hot`` of the foreground labels; the padding is
    zeros, as nnU-Net pads the stacked input. Where that segmentation changes the image's normalisation (masked
    normalisation with low-res foreground outside the nonzero mask, or a normalisation scheme of a plug-in), the
    whole input is made by nnU-Net's preprocessor with the segmentation instead.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.utilities.label_handling.label_handling import (
        convert_labelmap_to_one_hot,
    )

    plans, manager = bundle.plans_manager, bundle.configuration_manager
    properties = prepared.properties
    transpose = [0, *[int(a) + 1 for a in plans.transpose_forward]]
    crop = (slice(None), *bounding_box_to_slice(properties["bbox_used_for_cropping"]))
    seg = np.array(labels[None].astype(np.float32).transpose(transpose)[crop])  # float32: nnU-Net's read_seg
    nonzero = create_nonzero_mask(image.transpose(transpose)[crop].astype(np.float32))[None]  # cast as nnU-Net
    data = prepared.data
    if _segmentation_changes_normalisation(bundle, seg, nonzero):
        preprocessor = manager.preprocessor_class(verbose=False)
        fresh, resampled, _ = preprocessor.run_case_npy(image, labels[None].astype(np.float32),
                                                        copy.deepcopy(properties), plans, manager,
                                                        bundle.dataset_json)
        data = torch.zeros_like(prepared.data)
        data[(slice(None), *prepared.unpadded)] = torch.from_numpy(fresh).to(torch.float32)
    else:
        seg[(seg == 0) & ~nonzero] = -1
        original_spacing = [properties["spacing"][a - 1] for a in transpose[1:]]
        target_spacing = list(manager.spacing)
        if len(target_spacing) < seg.ndim - 1:
            target_spacing = [original_spacing[0], *target_spacing]
        new_shape = compute_new_shape(seg.shape[1:], original_spacing, target_spacing)
        resampled = manager.resampling_fn_seg(seg, new_shape, original_spacing, target_spacing)
        resampled = resampled.astype(np.int16 if np.max(resampled) > 127 else np.int8)
    onehot = convert_labelmap_to_one_hot(resampled[0], bundle.label_manager.foreground_labels, np.float32)
    padded = torch.zeros((onehot.shape[0], *data.shape[1:]), dtype=data.dtype)
    padded[(slice(None), *prepared.unpadded)] = torch.from_numpy(onehot)
    return replace(prepared, data=torch.cat([data, padded]))


def _segmentation_changes_normalisation(bundle: ModelBundle, seg: np.ndarray, nonzero: np.ndarray) -> bool:
    """Whether nnU-Net's normalisation of the image reads the segmentation (``seg >= 0`` as the mask) differently
    from the nonzero mask alone: masked normalisation with foreground outside the mask, or a plug-in scheme."""
    manager = bundle.configuration_manager
    if any(scheme not in _NNUNET_NORMALISATIONS for scheme in manager.normalization_schemes):
        return True
    return any(manager.use_mask_for_norm) and bool(np.any((seg > 0) & ~nonzero))


_NNUNET_NORMALISATIONS = {"ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                          "RGBTo01Normalization"}
"""nnU-Net's own schemes: they read the segmentation only as the mask of ``use_mask_for_norm``."""

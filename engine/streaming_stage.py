"""The predictor's streaming stage: a case's tiles into a window of slices with its export beside them
(:meth:`~tilewise.engine.Predictor.run_tiles`), the wait for its last slab (``finish``), and the window's size for
the memory plan (``plan_case``)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from .data.slab_file import writes_slab_wise
from .data.volume import Volume
from .errors import TilewiseError
from .events import EventHandler
from .model.bundle import ModelBundle
from .postprocess.export import Exported, crop_resampler, slab_wise
from .postprocess.streaming import PENDING_UPDATES, StreamingExport
from .prepared_case import PreparedCase
from .preprocess.grid_shape import ModelGrid, network_grid_shape, nonzero_extent
from .preprocess.pipeline import Preprocessed
from .runtime.memory import free_device_memory, record_peak
from .runtime.memory_plan import JobSize, Streaming
from .sliding.runner import SlidingResult, SlidingWindowRunner
from .sliding.window import streaming_rows

def streaming_mode(enabled: bool, with_probabilities: bool | None, focus: bool) -> str:
    """How ``plan_case`` may plan streaming (tiles in nnU-Net's order, the sums in a window of slices, the export on
    a second thread beside the tiles; :class:`~tilewise.engine.runtime.memory_plan.Streaming`).

    ``enabled`` True (a predictor's default): wherever a window fits, when the caller says whether ``finish`` will
    want probabilities (``with_probabilities`` True or False) and no slice priority will steer the tiles (``focus``
    False); otherwise only where the whole volume's float32 sums do not fit, rather than summing in float16 or
    refusing (then ``finish`` gives probabilities only if ``with_probabilities`` said so). The labels are the same
    either way (both add every voxel's terms in nnU-Net's order); streaming holds a window instead of the whole
    grid's sums and, on these 2 cores, takes about the same time (see the README). False: never."""
    if not enabled:
        return Streaming.NEVER
    if with_probabilities is None or focus:
        return Streaming.FALLBACK
    return Streaming.PREFER


def run_streaming(bundle: ModelBundle, case: PreparedCase, prepared: Preprocessed, runner: SlidingWindowRunner,
                  on_event: EventHandler | None, provisional_labels: bool) -> SlidingResult:
    """The case's tiles in nnU-Net's order into a window of slices, each final slab exported on a second thread
    while the next tiles run; the :class:`~tilewise.engine.postprocess.streaming.StreamingExport` is left on the case
    for :func:`finish_streaming` (and stopped when the tiles fail or are cancelled)."""
    assert case.plan is not None
    unpadded = prepared.unpadded
    resampler = crop_resampler(bundle, prepared.properties, tuple(s.stop - s.start for s in unpadded))
    assert resampler is not None, "streaming is planned only for slab-wise resampling rules"
    labels_file = None if case.labels_path is None else (case.labels_path, case.volume.geometry)
    export = StreamingExport(bundle, prepared.properties, unpadded, resampler, case.with_probabilities,
                             case.plan.slab_bytes, case.with_uncertainty, labels_file)
    try:
        run = runner.run_streaming(prepared.data, prepared.mapper, export.put, on_event, provisional_labels,
                                   export.put_plane)
    except BaseException:
        export.abort()
        raise
    case.export = export
    return run


def finish_streaming(case: PreparedCase, with_probabilities: bool, device: torch.device,
                     with_uncertainty: bool = False) -> Exported:
    """Wait for a streaming case's last slab (the time after the last tile is this one's): its labels (and
    probabilities, and the uncertainty map) on the grid the model's reader returned; the last two only if the case
    was planned with them."""
    export, case.export = case.export, None
    assert export is not None
    started = time.perf_counter()
    try:
        if with_probabilities and not case.with_probabilities:
            raise TilewiseError("--save_probabilities", "this case ran streaming without probabilities; plan it "
                                                        "with with_probabilities=True")
        if with_uncertainty and not case.with_uncertainty:
            raise TilewiseError("--save_uncertainty", "this case ran streaming without the uncertainty map; plan it "
                                                      "with with_uncertainty=True")
        exported = export.close()
    except BaseException:
        export.abort()
        raise
    case.notes += export.notes
    free_device_memory(device)
    case.timings["export"] = time.perf_counter() - started
    record_peak(case.peaks, "export")
    return Exported(exported.labels, exported.probabilities if with_probabilities else None,
                    exported.uncertainty if with_uncertainty else None, exported.labels_file)


def writes_labels_slab_wise(bundle: ModelBundle, reader_like_simpleitk: bool, case: PreparedCase, path: Path) -> bool:
    """Whether ``case``'s labels can go to ``path`` slab by slab as its export makes them (``case.labels_path``): a
    streaming case, a file format :class:`~.data.slab_file.SlabLabelFile` writes, and a model whose export rows are
    the file's slices (no transpose, read as SimpleITK reads)."""
    identity = list(range(len(bundle.plans_manager.transpose_forward)))
    return (case.plan is not None and case.plan.streaming and reader_like_simpleitk
            and list(bundle.plans_manager.transpose_forward) == identity
            and writes_slab_wise(path, case.volume.geometry))


def with_window(job: JobSize, bundle: ModelBundle, volume: Volume, tile_step: float, batch_size: int) -> JobSize:
    """``job`` with the network voxels a streaming run would hold (none where the export cannot stream)."""
    if not slab_wise(bundle):
        return job
    channels = [volume.array[c] for c in range(volume.num_channels)]
    grid = network_grid_shape(ModelGrid.of(bundle), nonzero_extent(channels), volume.nnunet_spacing)
    ring, held = streaming_rows(grid, bundle.patch_size, tile_step, batch_size,  # type: ignore[arg-type]
                                PENDING_UPDATES)
    return replace(job, window_voxels=held * grid[1] * grid[2], window_rows=ring)

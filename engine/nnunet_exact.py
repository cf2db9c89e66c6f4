"""``--nnunet-exact``: the file ``nnUNetv2_predict_from_modelfolder`` writes, voxel for voxel, in one process.

What it takes to reproduce nnU-Net 2.8's predictor exactly (``predict_from_raw_data.py``), and how it is done here:

- nnU-Net's own preprocessor class (``run_case_npy``), not the parallel one (equal only to a rounding step);
- PyTorch with batch 1, in float32 on the CPU (and autocast on CUDA, as nnU-Net does), mirrors summed then divided;
- each fold's sliding window on its own, tiles in nnU-Net's order, into **float16** sums weighted by nnU-Net's
  float16 Gaussian; the folds' float16 logits added on the CPU and divided by their count;
- nnU-Net's own export (``convert_predicted_logits_to_segmentation_with_correct_shape``).

It stays faster than nnU-Net's CLI because nothing else is there: no worker pools, no file round trips.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .backends.torch_backend import TorchBackend
from .data.model_reader import SIMPLEITK_READER, labels_in_volume_order, read_as_model, reads_like_simpleitk
from .data.volume import Volume
from .errors import Cancelled
from .events import CancelToken, EventHandler, TileEvent
from .model.bundle import ModelBundle
from .postprocess.labels import logits_to_labels
from .preprocess.pipeline import preprocess
from .sliding.accumulators import Placement
from .sliding.runner import SlidingWindowRunner

NNUNET_SUMS = torch.float16
"""The dtype of nnU-Net's ``predicted_logits`` and ``n_predictions``."""


def _fold_events(on_event: EventHandler | None, fold: int, folds: int) -> EventHandler | None:
    """Tile events of one fold's run, counted over all folds' tiles (one progress bar for the whole case)."""
    if on_event is None:
        return None

    def forward(event: TileEvent) -> None:
        done = fold * event.total + event.done
        total = folds * event.total
        on_event(replace(event, done=done, total=total, eta_s=event.elapsed_s / max(event.done, 1) * (total - done)))

    return forward


def predict_like_nnunet(bundle: ModelBundle, networks: list[nn.Module], device: torch.device,
                        mirror_axes: tuple[int, ...], tile_step: float, precision: str, volume: Volume,
                        on_event: EventHandler | None, cancel: CancelToken | None,
                        with_probabilities: bool, reader: str = SIMPLEITK_READER) -> dict[str, Any]:
    """Run ``volume`` exactly as nnU-Net's predictor would with these fold ``networks``, mirrors and tile step.

    Returns the pieces of a :class:`~tilewise.engine.Result`: labels, probabilities, properties, timings, tiles.
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    timings: dict[str, float] = {}
    started = time.perf_counter()
    as_read = None if reads_like_simpleitk(reader) else read_as_model(volume, reader)
    prepared = preprocess(volume, bundle, with_nonzero_mask=False, use_nnunet_code=True, as_read=as_read)
    if cancel is not None and cancel.cancelled:
        raise Cancelled()
    timings["preprocess"] = time.perf_counter() - started

    started = time.perf_counter()
    heads = bundle.label_manager.num_segmentation_heads
    sums = Placement(device, NNUNET_SUMS)
    summed: torch.Tensor | None = None
    tiles = 0
    for fold, network in enumerate(networks):
        backend = TorchBackend([network], mirror_axes, device, precision, keep_network_dtype=True)
        runner = SlidingWindowRunner(backend, bundle.patch_size, tile_step, 1, heads,
                                     lambda logits: logits_to_labels(logits, bundle), placement_order=[sums],
                                     nnunet_order=True)
        logits = runner.run(prepared.data, prepared.mapper, _fold_events(on_event, fold, len(networks)),
                            cancel).to("cpu")
        summed = logits if summed is None else summed.add_(logits)  # float16 + float16, as nnU-Net adds folds
        tiles = runner.tiles_run
    assert summed is not None
    if len(networks) > 1:
        summed /= len(networks)
    timings["sliding_window"] = time.perf_counter() - started

    started = time.perf_counter()
    if cancel is not None and cancel.cancelled:
        raise Cancelled()
    exported = convert_predicted_logits_to_segmentation_with_correct_shape(
        summed[(slice(None), *prepared.unpadded)], bundle.plans_manager, bundle.configuration_manager,
        bundle.label_manager, prepared.properties, return_probabilities=with_probabilities,
        num_threads_torch=torch.get_num_threads())
    labels, probabilities = exported if with_probabilities else (exported, None)
    if as_read is not None:  # nnU-Net writes through its reader; this is that file's content in the volume's order
        labels = labels_in_volume_order(labels, prepared.properties, reader, volume.shape)
    timings["export"] = time.perf_counter() - started
    return {"labels": labels, "probabilities": probabilities, "properties": prepared.properties, "timings": timings,
            "tiles": tiles, "forward_passes": tiles * backend.passes_per_tile * len(networks)}

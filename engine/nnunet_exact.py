"""``--nnunet-exact``: the file ``nnUNetv2_predict_from_modelfolder`` writes, voxel for voxel, in one process.

What it takes to reproduce nnU-Net 2.8's predictor exactly (``predict_from_raw_data.py``), and how it is done here:

- nnU-Net's own preprocessor class (``run_case_npy``), not the parallel one (equal only to a rounding step);
- PyTorch with batch 1, in float32 on the CPU (and autocast on CUDA, as nnU-Net does), mirrors summed then divided;
- each fold's sliding window on its own, tiles in nnU-Net's order, into **float16** sums weighted by nnU-Net's
  float16 Gaussian; the folds' float16 logits added on the CPU and divided by their count;
- nnU-Net's own export (``convert_predicted_logits_to_segmentation_with_correct_shape``).

It stays faster than nnU-Net's CLI because nothing else is there: no worker pools, no file round trips. The
:class:`~tilewise.engine.Predictor` runs these steps as its stages (preprocessing with ``use_nnunet_code``, through
its reuse cache like any run; :func:`run_like_nnunet`; :func:`export_like_nnunet`), so a batch overlaps them too.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .backends.torch_backend import TorchBackend
from .events import EventHandler, TileEvent
from .model.bundle import ModelBundle
from .postprocess.labels import logits_to_labels
from .preprocess.pipeline import Preprocessed
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


def run_like_nnunet(bundle: ModelBundle, networks: list[nn.Module], device: torch.device,
                    mirror_axes: tuple[int, ...], tile_step: float, precision: str, prepared: Preprocessed,
                    on_event: EventHandler | None) -> tuple[torch.Tensor, int, int]:
    """nnU-Net's sliding window over ``prepared`` (made by nnU-Net's own preprocessor class) with these fold
    ``networks``, mirrors and tile step: the folds' averaged float16 logits on the CPU (padded grid), the tiles of
    one fold and the forward passes of all folds."""
    heads = bundle.label_manager.num_segmentation_heads
    sums = Placement(device, NNUNET_SUMS)
    summed: torch.Tensor | None = None
    tiles = passes = 0
    for fold, network in enumerate(networks):
        backend = TorchBackend([network], mirror_axes, device, precision, keep_network_dtype=True)
        runner = SlidingWindowRunner(backend, bundle.patch_size, tile_step, 1, heads,
                                     lambda logits: logits_to_labels(logits, bundle), placement_order=[sums],
                                     nnunet_order=True)
        run = runner.run(prepared.data, prepared.mapper, _fold_events(on_event, fold, len(networks)))
        logits = run.logits.to("cpu")
        summed = logits if summed is None else summed.add_(logits)  # float16 + float16, as nnU-Net adds folds
        tiles = run.tiles_run
        passes += run.forward_passes
    assert summed is not None
    if len(networks) > 1:
        summed /= len(networks)
    return summed, tiles, passes


def export_like_nnunet(bundle: ModelBundle, logits: torch.Tensor, properties: dict[str, Any],
                       with_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """nnU-Net's own export of ``logits`` (the unpadded network grid) to labels on the grid the model's reader
    returned, and the probabilities when asked for."""
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    exported = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, bundle.plans_manager, bundle.configuration_manager, bundle.label_manager, properties,
        return_probabilities=with_probabilities, num_threads_torch=torch.get_num_threads())
    return exported if with_probabilities else (exported, None)

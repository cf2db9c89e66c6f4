"""The predictor's export stage: a case's averaged logits (or its streaming export) to labels, probabilities and the
uncertainty map on the grid the model's reader returned (:meth:`~tilewise.engine.Predictor.finish`)."""
from __future__ import annotations

import time

import numpy as np
import torch

from .events import check_cancelled
from .model.bundle import ModelBundle
from .nnunet_exact import export_like_nnunet
from .postprocess.export import Exported, export_with_fallback
from .postprocess.uncertainty import probabilities_uncertainty
from .prepared_case import PreparedCase
from .runtime.memory import free_device_memory, record_peak
from .streaming_stage import finish_streaming

_MAP_ROWS = 16
"""Rows of nnU-Net's probabilities turned into the uncertainty map at a time (bounds the float working copy)."""


def export_case(case: PreparedCase, bundle: ModelBundle, nnunet_exact: bool, device: torch.device,
                with_probabilities: bool, with_uncertainty: bool = False) -> Exported:
    """The case's labels (and probabilities, and the uncertainty map) on the grid the model's reader returned; when
    device memory runs out during export, it is done again on the host."""
    if case.export is not None:
        return finish_streaming(case, with_probabilities, device, with_uncertainty)
    prepared = case.prepared
    assert prepared is not None and case.logits is not None, "run_tiles first"
    started = time.perf_counter()
    logits, case.logits = case.logits[(slice(None), *prepared.unpadded)], None
    if nnunet_exact:
        check_cancelled()
        labels, probabilities = export_like_nnunet(bundle, logits, prepared.properties,
                                                   with_probabilities or with_uncertainty)
        uncertainty = None
        if with_uncertainty:
            assert probabilities is not None
            uncertainty = map_of_probabilities(probabilities, bundle.label_manager.has_regions)
        exported = Exported(labels, probabilities if with_probabilities else None, uncertainty)
    else:
        assert case.plan is not None
        exported = export_with_fallback(logits, bundle, prepared.properties, with_probabilities, case.plan.slab_bytes,
                                        device, case.notes, with_uncertainty)
    del logits
    free_device_memory(device)
    case.timings["export"] = time.perf_counter() - started
    record_peak(case.peaks, "export")
    return exported


def map_of_probabilities(probabilities: np.ndarray, has_regions: bool) -> np.ndarray:
    """The uncertainty map (uint8, z, y, x) of whole-volume probabilities (classes, z, y, x), a few rows at a time:
    ``--nnunet-exact`` takes it from nnU-Net's own export, which computes them anyway."""
    uncertainty = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for start in range(0, probabilities.shape[1], _MAP_ROWS):
        rows = torch.from_numpy(np.ascontiguousarray(probabilities[:, start:start + _MAP_ROWS], dtype=np.float32))
        uncertainty[start:start + _MAP_ROWS] = probabilities_uncertainty(rows, has_regions).numpy()
    return uncertainty

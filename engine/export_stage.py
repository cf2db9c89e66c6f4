"""The predictor's export stage: a case's averaged logits (or its streaming export) to labels and probabilities on
the grid the model's reader returned (:meth:`~tilewise.engine.Predictor.finish`)."""
from __future__ import annotations

import time

import numpy as np
import torch

from .events import check_cancelled
from .model.bundle import ModelBundle
from .nnunet_exact import export_like_nnunet
from .postprocess.export import export_with_fallback
from .prepared_case import PreparedCase
from .runtime.memory import free_device_memory, record_peak
from .streaming_stage import finish_streaming


def export_case(case: PreparedCase, bundle: ModelBundle, nnunet_exact: bool, device: torch.device,
                with_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The case's labels (and probabilities) on the grid the model's reader returned; when device memory runs out
    during export, it is done again on the host."""
    if case.export is not None:
        return finish_streaming(case, with_probabilities, device)
    prepared = case.prepared
    assert prepared is not None and case.logits is not None, "run_tiles first"
    started = time.perf_counter()
    logits, case.logits = case.logits[(slice(None), *prepared.unpadded)], None
    if nnunet_exact:
        check_cancelled()
        labels, probabilities = export_like_nnunet(bundle, logits, prepared.properties, with_probabilities)
    else:
        assert case.plan is not None
        labels, probabilities = export_with_fallback(logits, bundle, prepared.properties, with_probabilities,
                                                     case.plan.slab_bytes, device, case.notes)
    del logits
    free_device_memory(device)
    case.timings["export"] = time.perf_counter() - started
    record_peak(case.peaks, "export")
    return labels, probabilities

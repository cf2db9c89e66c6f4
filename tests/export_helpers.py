"""Shared by the export tests: a test model's case preprocessed on a spacing off the model's grid, and nnU-Net's own
labels of logits on that case's network grid."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import model_factory
import numpy as np
import torch
from tilewise.engine import read_volume
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.preprocess.pipeline import preprocess

OFF_GRID = (0.83, 1.13, 0.91)
"""The case's spacing as a multiple of the model's, per axis: every axis is resampled."""


def off_grid_case(bundle: ModelBundle, kind: str, tmp_path: Path) -> Any:
    """A 48 x 56 x 60 case of model ``kind`` at :data:`OFF_GRID` times its spacing, preprocessed without the mask."""
    spacing = tuple(s * f for s, f in zip(model_factory.default_spacing(kind), OFF_GRID))
    volume = read_volume(model_factory.case_files(tmp_path, "case", kind, shape=(48, 56, 60), spacing=spacing))
    return preprocess(volume, bundle, with_nonzero_mask=False)


def nnunet_labels(logits: torch.Tensor, bundle: ModelBundle, properties: dict) -> np.ndarray:
    """nnunetv2's export of ``logits`` (network grid, unpadded) to labels on the input grid, without probabilities."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), bundle.plans_manager, bundle.configuration_manager, bundle.label_manager, properties))

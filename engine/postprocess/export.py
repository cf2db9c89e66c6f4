"""From network-grid logits to labels (and probabilities) on the input grid, in torch on the compute device."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model.bundle import ModelBundle
from .labels import logits_to_labels
from .resample import resample_logits

_NNUNET_PROBABILITY_RESAMPLER = "resample_data_or_seg_to_shape"


@dataclass
class Exported:
    """Labels (z, y, x) on the input grid, and class probabilities (classes, z, y, x) if asked for."""

    labels: np.ndarray
    probabilities: np.ndarray | None


def _network_spacing(bundle: ModelBundle, properties: dict[str, Any]) -> tuple[list[float], list[float]]:
    manager, plans = bundle.configuration_manager, bundle.plans_manager
    original = [properties["spacing"][i] for i in plans.transpose_forward]
    current = list(manager.spacing)
    if len(current) < len(properties["shape_after_cropping_and_before_resampling"]):
        current = [original[0], *current]
    return current, original


def resample_to_crop(logits: torch.Tensor, bundle: ModelBundle, properties: dict[str, Any]) -> torch.Tensor:
    """Logits on the network grid -> logits on the cropped input grid, by the model's own resampling rule."""
    manager = bundle.configuration_manager
    target_shape = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    current, original = _network_spacing(bundle, properties)
    name = manager.configuration.get("resampling_fn_probabilities")
    kwargs = dict(manager.configuration.get("resampling_fn_probabilities_kwargs") or {})
    if name == _NNUNET_PROBABILITY_RESAMPLER and kwargs.get("order", 1) in (0, 1) and kwargs.get("order_z", 0) in (0, 1):
        return resample_logits(
            logits, target_shape, current, original,
            order=int(kwargs.get("order", 1)), order_z=int(kwargs.get("order_z", 0)),
            force_separate_z=kwargs.get("force_separate_z"),
            separate_z_anisotropy_threshold=kwargs.get("separate_z_anisotropy_threshold"),
        )
    resampled = manager.resampling_fn_probabilities(logits.cpu().numpy(), target_shape, current, original)
    return torch.as_tensor(np.asarray(resampled), dtype=torch.float32, device=logits.device)


def export_logits(logits: torch.Tensor, bundle: ModelBundle, properties: dict[str, Any],
                  with_probabilities: bool = False) -> Exported:
    """Undo preprocessing: resample, convert to labels, un-crop, transpose back to the input's axis order."""
    plans = bundle.plans_manager
    cropped = resample_to_crop(logits, bundle, properties)
    del logits
    labels_cropped = logits_to_labels(cropped, bundle)
    dtype = np.uint8 if len(bundle.label_manager.foreground_labels) < 255 else np.uint16
    labels = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"])
    labels[crop] = labels_cropped.cpu().numpy().astype(dtype, copy=False)
    labels = np.ascontiguousarray(labels.transpose(plans.transpose_backward))
    probabilities = None
    if with_probabilities:
        manager = bundle.label_manager
        cropped_probabilities = manager.apply_inference_nonlin(cropped).cpu()
        full = manager.revert_cropping_on_probabilities(
            cropped_probabilities, properties["bbox_used_for_cropping"], properties["shape_before_cropping"]
        )
        full = full.numpy() if isinstance(full, torch.Tensor) else full
        probabilities = np.ascontiguousarray(full.transpose([0] + [i + 1 for i in plans.transpose_backward]))
    return Exported(labels=labels, probabilities=probabilities)

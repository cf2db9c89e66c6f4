"""The plans' ``resample_data_or_seg_to_shape`` settings, for image data or for segmentations (the nonzero mask)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_NNUNET_RESAMPLING = "resample_data_or_seg_to_shape"


@dataclass(frozen=True)
class Resampling:
    """The keyword arguments of the plans' ``resample_data_or_seg_to_shape``."""

    order: int
    order_z: int
    force_separate_z: bool | None
    anisotropy_threshold: float


def resampling_settings(configuration: dict[str, Any], is_seg: bool) -> Resampling | None:
    """The plans' resampling settings for segmentations (``is_seg``) or image data, or None if they name another
    function or options we do not know."""
    from nnunetv2.configuration import ANISO_THRESHOLD

    kind = "seg" if is_seg else "data"
    if configuration.get(f"resampling_fn_{kind}") != _NNUNET_RESAMPLING:
        return None
    kwargs = dict(configuration.get(f"resampling_fn_{kind}_kwargs", {}))
    if bool(kwargs.pop("is_seg", False)) != is_seg:
        return None
    settings = Resampling(
        order=int(kwargs.pop("order", 3)),
        order_z=int(kwargs.pop("order_z", 0)),
        force_separate_z=kwargs.pop("force_separate_z", False),
        anisotropy_threshold=float(kwargs.pop("separate_z_anisotropy_threshold", ANISO_THRESHOLD)),
    )
    return None if kwargs else settings

"""nnU-Net's preprocessing of one case (transpose, crop to nonzero, normalise, resample), run in-process.

Models preprocessed by nnU-Net's ``DefaultPreprocessor`` with its standard resampling (nearly all) go through
:mod:`~tilewise.engine.preprocess.default_preprocessor`, which gives nnU-Net's numbers on all cores. Any other preprocessor
class named in the plans is called as nnU-Net calls it, on the in-memory array.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import default_preprocessor
from .grid_mapping import GridMapper
from ..model.bundle import ModelBundle
from ..data.volume import Volume
from ..runtime.quiet import silenced_stdout


@dataclass
class Preprocessed:
    """Network-grid data (channels, z, y, x), padded to at least one tile, and how to map it back."""

    data: torch.Tensor
    nonzero: torch.Tensor | None
    """nnU-Net's nonzero mask (z, y, x) on the padded grid: False outside what it cropped to and in padding.

    None unless asked for (it costs a hole filling and a resampling)."""
    properties: dict[str, Any]
    mapper: GridMapper
    unpadded: tuple[slice, slice, slice]


def preprocess(volume: Volume, bundle: ModelBundle, with_nonzero_mask: bool = True,
               use_nnunet_code: bool = False, as_read: tuple[np.ndarray, dict[str, Any]] | None = None) -> Preprocessed:
    """Run the model's nnU-Net preprocessing on ``volume`` and pad the result to the tile size as nnU-Net does.

    Uses as many threads as torch (the device's thread setting). ``with_nonzero_mask`` also returns nnU-Net's
    nonzero mask on the network grid. ``use_nnunet_code`` runs nnU-Net's own preprocessor class even where the
    parallel one gives the same numbers to within a rounding step (``--nnunet-exact`` wants them bit for bit).
    ``as_read`` is the image as the model's own reader returned it (array and nnU-Net properties), for models whose
    reader is not SimpleITK's (:mod:`~tilewise.engine.data.model_reader`).
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    array = volume.array
    properties: dict[str, Any] = {
        "spacing": volume.nnunet_spacing,
        "sitk_stuff": {
            "spacing": volume.geometry.spacing,
            "origin": volume.geometry.origin,
            "direction": volume.geometry.direction,
        },
    }
    if as_read is not None:
        array, properties = as_read[0], dict(as_read[1])
    if default_preprocessor.supports(bundle) and not use_nnunet_code:
        data, seg, properties = default_preprocessor.run_default_preprocessing(
            array, properties, bundle, with_nonzero_mask, torch.get_num_threads(),
            source=volume.sources[0] if volume.sources else "input")
    else:
        manager = bundle.configuration_manager
        preprocessor = manager.preprocessor_class(verbose=False)
        with silenced_stdout():
            data, seg, properties = preprocessor.run_case_npy(
                array, None, properties, bundle.plans_manager, manager, bundle.dataset_json
            )
    tensor = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    network_shape = tuple(int(s) for s in tensor.shape[1:])
    patch = bundle.patch_size
    pad_target = patch if len(patch) == 3 else (1, *patch)
    padded, revert = pad_nd_image(tensor, pad_target, "constant", {"value": 0}, True, None)
    unpadded = tuple(slice(int(s.start), int(s.stop)) for s in revert[1:])
    nonzero = None
    if with_nonzero_mask and seg is not None:
        nonzero = torch.zeros(padded.shape[1:], dtype=torch.bool)
        nonzero[unpadded] = torch.from_numpy(seg[0] >= 0)
    mapper = GridMapper(
        transpose_forward=tuple(int(a) for a in bundle.plans_manager.transpose_forward),  # type: ignore[arg-type]
        crop_start=tuple(int(lo) for lo, _ in properties["bbox_used_for_cropping"]),  # type: ignore[arg-type]
        crop_shape=tuple(int(s) for s in properties["shape_after_cropping_and_before_resampling"]),  # type: ignore[arg-type]
        network_shape=network_shape,  # type: ignore[arg-type]
        pad_before=tuple(s.start for s in unpadded),  # type: ignore[arg-type]
    )
    return Preprocessed(data=padded, nonzero=nonzero, properties=properties, mapper=mapper, unpadded=unpadded)  # type: ignore[arg-type]

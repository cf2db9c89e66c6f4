"""A cascade stage's network input: its image with the previous stage's segmentation stacked on, as nnU-Net's
predictor builds it."""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..model.bundle import ModelBundle
from .pipeline import Preprocessed


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


def check_previous_labels(bundle: ModelBundle, source: Path | str, shape: tuple[int, ...],
                          labels: np.ndarray | None, runs_previous_stage: bool) -> None:
    """Raise :class:`InputError` (one line, naming ``source``) unless a case of ``shape`` (z, y, x) may run with
    ``labels``, its previous-stage segmentation: given only to a cascade stage, on the image's grid, and given when
    the cascade stage does not run its previous stage itself (``runs_previous_stage``)."""
    previous = bundle.previous_stage_name
    if labels is not None and previous is None:
        raise InputError(source, f"comes with a previous-stage segmentation, but the model's "
                                 f"'{bundle.configuration_name}' configuration is not a cascade stage")
    if labels is not None and tuple(labels.shape) != tuple(shape):
        raise InputError(source, f"its previous-stage segmentation is {tuple(labels.shape)} voxels, the image "
                                 f"{tuple(shape)}")
    if labels is None and previous is not None and not runs_previous_stage:
        raise InputError(source, f"needs its '{previous}' stage's segmentation (-prev_stage_predictions)")


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

"""nnU-Net's ``DefaultPreprocessor.run_case_npy`` for inference, with the same numbers, on all cores.

nnU-Net's preprocessor runs on one core and also does work that inference without a label map does not use:
filling holes in the nonzero mask and resampling that mask. This module runs the same steps with nnU-Net's own
functions where they are cheap (cropping box, normalisation, target shape, separate-z rule) and computes the
expensive ones in parallel with the same arithmetic (the crop box, shapes and mask are identical; the data equal
nnU-Net's to within one float32 rounding step, see :mod:`~tilewise.engine.spline_resize`):

- the nonzero mask's holes are filled only when something reads the mask (a normalisation that uses it, or tile
  skipping), and only inside the crop box; the crop box of a mask equals that of its filled version, and a hole
  is a hole inside the box exactly when it is one in the whole image; the mask is resampled window by window by
  :func:`~tilewise.engine.preprocess.nonzero_mask.resample_mask` (the same int8 mask without nnU-Net's float64
  copies of it);
- the image is resampled by :func:`~tilewise.engine.spline_resize.resize_like_skimage` (3-D), or slice by slice
  on a thread pool with skimage itself followed by nnU-Net's ``map_coordinates`` step in slabs (separate z).

:func:`supports` says whether a model's plans use this preprocessor and resampling; otherwise callers run
nnU-Net's preprocessor class. ``tests/test_default_preprocessing.py`` compares both on many shapes.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..model.bundle import ModelBundle
from ..runtime.parallel import run_all, slabs
from .nonzero_mask import as_labels, fill_holes, resample_mask
from .normalised_crop import NormalisedCrop, cropped_nonzero, elementwise_normalisers, nonzero_box, nonzero_of
from .resampling_settings import Resampling, resampling_settings
from .spline_resize import resize_source, value_range

_MASK_FREE_NORMALISATIONS = {"ZScoreNormalization", "CTNormalization", "NoNormalization",
                             "RescaleTo01Normalization", "RGBTo01Normalization"}
"""nnU-Net's own schemes, which read the nonzero mask only when ``use_mask_for_norm`` is set."""


def _data_resampling(bundle: ModelBundle) -> Resampling | None:
    """The plans' data resampling settings, or None if they name another function or options we do not know."""
    return resampling_settings(bundle.configuration_manager.configuration, is_seg=False)


def supports(bundle: ModelBundle) -> bool:
    """True if the model is preprocessed by nnU-Net's DefaultPreprocessor with its standard data resampling."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    return bundle.configuration_manager.preprocessor_class is DefaultPreprocessor and _data_resampling(bundle) is not None


def _needs_mask_for_normalisation(bundle: ModelBundle) -> bool:
    manager = bundle.configuration_manager
    return any(manager.use_mask_for_norm) or any(s not in _MASK_FREE_NORMALISATIONS for s in manager.normalization_schemes)


def _resample_separate_z(image: np.ndarray, new_shape: np.ndarray, axis: int, settings: Resampling,
                         threads: int) -> np.ndarray:
    """nnU-Net's separate-z resampling of one float64 channel: in-plane skimage per slice, then ``order_z`` along
    ``axis`` with ``map_coordinates`` (both as nnU-Net calls them, split over ``threads`` threads)."""
    from scipy.ndimage import map_coordinates
    from skimage.transform import resize

    in_plane = tuple(int(s) for i, s in enumerate(new_shape) if i != axis)
    per_slice_shape = [int(s) for s in new_shape]
    per_slice_shape[axis] = image.shape[axis]
    per_slice = np.zeros(per_slice_shape)

    def resize_slice(index: int) -> None:
        where: list[Any] = [slice(None)] * 3
        where[axis] = index
        per_slice[tuple(where)] = resize(image[tuple(where)], in_plane, settings.order, mode="edge",
                                         anti_aliasing=False)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        run_all(pool, [lambda i=i: resize_slice(i) for i in range(image.shape[axis])])
    if image.shape[axis] == new_shape[axis]:
        return per_slice
    scales = [float(o) / n for o, n in zip(per_slice.shape, new_shape)]
    resized = np.empty(tuple(int(s) for s in new_shape))
    rows = int(new_shape[0])

    def slab(start: int, stop: int) -> None:
        grid = np.mgrid[start:stop, :new_shape[1], :new_shape[2]]
        coordinates = np.array([scale * (g + 0.5) - 0.5 for scale, g in zip(scales, grid)])
        resized[start:stop] = map_coordinates(per_slice, coordinates, order=settings.order_z, mode="nearest")

    # a spline order above 1 prefilters the whole array in every call, so that case stays one call
    parts = 1 if settings.order_z > 1 else 4 * threads
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        run_all(pool, [lambda a=a, b=b: slab(a, b) for a, b in slabs(rows, parts)])
    return resized


def _resample_data(image: NormalisedCrop, new_shape: np.ndarray, original_spacing: list[float],
                   target_spacing: list[float], settings: Resampling, threads: int) -> np.ndarray | None:
    """nnU-Net's ``resample_data_or_seg_to_shape`` of image data, or None where only nnU-Net's own call is exact."""
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    shape = image.shape[1:]
    if tuple(shape) == tuple(int(s) for s in new_shape):
        return image.whole()
    separate_z, axis = determine_do_sep_z_and_axis(settings.force_separate_z, original_spacing, target_spacing,
                                                   settings.anisotropy_threshold)
    if not separate_z and settings.order == 0:
        return None
    resampled = np.zeros((image.shape[0], *(int(s) for s in new_shape)), dtype=np.float32)
    for channel in range(image.shape[0]):
        if separate_z:
            whole = image.channel(channel, np.float64)
            resampled[channel] = _resample_separate_z(whole, new_shape, int(axis), settings, threads)
        else:  # converts to float64 as it pads, window by window
            source = image.source(channel)
            resampled[channel] = resize_source(source, shape, new_shape, settings.order, threads,
                                               value_range(source, shape))  # type: ignore[arg-type]
    return resampled


def _crop(image: np.ndarray, transpose: list[int], bundle: ModelBundle, with_mask: bool,
          properties: dict[str, Any]) -> tuple[NormalisedCrop, np.ndarray | None]:
    """nnU-Net's transpose, crop to the nonzero box and normalisation of ``image``, and its nonzero mask with holes
    filled (bool; None unless ``with_mask`` or the normalisation reads it). A voxel-by-voxel normalisation is applied
    as the resampler reads (no full-size copy); any other one as nnU-Net does."""
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice, get_bbox_from_mask

    plans, manager = bundle.plans_manager, bundle.configuration_manager
    intensities = plans.foreground_intensity_properties_per_channel
    axes = [0, *[a + 1 for a in transpose]]
    normalisers = elementwise_normalisers(manager, intensities)
    needs_mask = with_mask or _needs_mask_for_normalisation(bundle)
    if normalisers is not None:
        view = image.transpose(axes)
        bbox = nonzero_box(view)
        cropped = view[(slice(None), *bounding_box_to_slice(bbox))]
        nonzero = cropped_nonzero(cropped) if needs_mask else None
    else:
        data = image.astype(np.float32).transpose(axes)
        full_mask = nonzero_of(data)
        bbox = get_bbox_from_mask(full_mask)
        crop = bounding_box_to_slice(bbox)
        cropped, nonzero = data[(slice(None), *crop)], full_mask[crop] if needs_mask else None
        del full_mask
    properties["shape_before_cropping"] = tuple(int(image.shape[a]) for a in axes[1:])
    properties["bbox_used_for_cropping"] = bbox
    properties["shape_after_cropping_and_before_resampling"] = cropped.shape[1:]
    filled = None if nonzero is None else fill_holes(nonzero)
    if normalisers is not None:
        return NormalisedCrop(cropped, normalisers), filled
    norm_mask = as_labels(filled)[None] if filled is not None else np.broadcast_to(np.int8(0), (1, *cropped.shape[1:]))
    normalised = manager.preprocessor_class(verbose=False)._normalize(cropped, norm_mask, manager, intensities)
    return NormalisedCrop(normalised, None), filled


def run_default_preprocessing(image: np.ndarray, properties: dict[str, Any], bundle: ModelBundle,
                              with_mask: bool, threads: int, source: str | Path = "input",
                              ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Preprocess ``image`` (channels, z, y, x) like nnU-Net's ``DefaultPreprocessor.run_case_npy`` without labels.

    Returns the network-grid data (float32), nnU-Net's resampled nonzero map (int8: 0 inside, -1 outside) when
    ``with_mask`` is set (else None), and ``properties`` with nnU-Net's cropping entries added. Raises
    :class:`~tilewise.engine.errors.InputError` naming ``source`` if the image's nonzero region is smaller than one
    voxel at the model's spacing (nnU-Net fails there with a numpy error).
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    manager = bundle.configuration_manager
    settings = _data_resampling(bundle)
    if settings is None:
        raise ValueError(f"{bundle.path}: its plans need nnU-Net's own preprocessor")
    transpose = [int(a) for a in bundle.plans_manager.transpose_forward]
    original_spacing = [properties["spacing"][a] for a in transpose]
    data, filled = _crop(image, transpose, bundle, with_mask, properties)
    shape = data.shape[1:]

    target_spacing = list(manager.spacing)
    if len(target_spacing) < len(shape):
        target_spacing = [original_spacing[0], *target_spacing]
    new_shape = compute_new_shape(shape, original_spacing, target_spacing)
    if min(int(s) for s in new_shape) < 1:
        shape_text = " x ".join(str(int(s)) for s in shape)
        raise InputError(source, f"its nonzero region ({shape_text} voxels) is less than one voxel wide at the "
                                 f"model's spacing {' x '.join(f'{t:g}' for t in target_spacing)} mm")
    seg = None  # the mask first, so that its full-resolution copy is gone before the image is resampled
    if filled is not None and with_mask:
        seg = resample_mask(filled, new_shape, original_spacing, target_spacing, manager, threads)
    del filled
    resampled = _resample_data(data, new_shape, original_spacing, target_spacing, settings, threads)
    if resampled is None:
        resampled = manager.resampling_fn_data(data.whole(), new_shape, original_spacing, target_spacing)
    return resampled, seg, properties

"""Network-grid logits to labels (and probabilities) on the input grid, slab by slab, in torch on the compute device."""
from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DiskSpaceError, OutOfMemoryError
from ..events import check_cancelled
from ..model.bundle import ModelBundle
from ..runtime.memory import free_device_memory, is_out_of_memory
from .labels import logits_to_labels
from .resample import ORDERS, LogitResampler, slab_rows
from .ties import settle_ties

DEFAULT_SLAB_BYTES = 512 * 2**20
"""Working memory of one export slab unless the memory plan gives another figure."""

_NNUNET_PROBABILITY_RESAMPLER = "resample_data_or_seg_to_shape"


@dataclass
class Exported:
    """Labels (z, y, x) on the input grid, and class probabilities (classes, z, y, x) if asked for."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    """A view of a temporary file (numpy memmap) when present: it streams, it is not held in memory."""


def _network_spacing(bundle: ModelBundle, properties: dict[str, Any]) -> tuple[list[float], list[float]]:
    manager, plans = bundle.configuration_manager, bundle.plans_manager
    original = [properties["spacing"][i] for i in plans.transpose_forward]
    current = list(manager.spacing)
    if len(current) < len(properties["shape_after_cropping_and_before_resampling"]):
        current = [original[0], *current]
    return current, original


def _nnunet_resampling_arguments(bundle: ModelBundle) -> tuple[str | None, dict[str, Any]]:
    """The plans' probability resampler and its arguments, with nnunetv2's own defaults for what the plans omit
    (``resample_data_or_seg_to_shape``: order 3, order_z 0, force_separate_z False)."""
    configuration = bundle.configuration_manager.configuration
    kwargs = {"order": 3, "order_z": 0, "force_separate_z": False, "separate_z_anisotropy_threshold": None,
              **dict(configuration.get("resampling_fn_probabilities_kwargs") or {})}
    kwargs.pop("is_seg", None)
    return configuration.get("resampling_fn_probabilities"), kwargs


def crop_resampler(bundle: ModelBundle, properties: dict[str, Any], network_shape: tuple[int, ...]) -> LogitResampler | None:
    """The slab-wise resampler from the network grid to the cropped input grid, or None when the model's rule is one
    only nnunetv2's own function computes (another resampler, or cubic orders)."""
    name, kwargs = _nnunet_resampling_arguments(bundle)
    if name != _NNUNET_PROBABILITY_RESAMPLER or kwargs["order"] not in ORDERS or kwargs["order_z"] not in ORDERS:
        return None
    current, original = _network_spacing(bundle, properties)
    target = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    return LogitResampler(network_shape, target, current, original, order=int(kwargs["order"]),
                          order_z=int(kwargs["order_z"]), force_separate_z=kwargs["force_separate_z"],
                          separate_z_anisotropy_threshold=kwargs["separate_z_anisotropy_threshold"])


def _nnunet_resample(logits: torch.Tensor, bundle: ModelBundle, properties: dict[str, Any]) -> torch.Tensor:
    """nnunetv2's own resampling of all logits at once (for rules this module does not compute slab by slab)."""
    current, original = _network_spacing(bundle, properties)
    target = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    resampled = bundle.configuration_manager.resampling_fn_probabilities(logits.float().cpu().numpy(), target, current,
                                                                          original)
    return torch.as_tensor(np.asarray(resampled), dtype=torch.float32, device=logits.device)


def _probability_file(bundle: ModelBundle, properties: dict[str, Any]) -> np.memmap:
    """A float32 (classes, *uncropped grid) array on a temporary file, background where nnU-Net puts it outside the
    crop; refused up front when the disk cannot hold it."""
    shape = (int(bundle.label_manager.num_segmentation_heads), *(int(s) for s in properties["shape_before_cropping"]))
    needed = 4 * math.prod(shape)
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if needed > 0.95 * free:
        raise DiskSpaceError(folder, f"class probabilities need {needed / 1e9:.1f} GB of temporary disk space, "
                                     f"{free / 1e9:.1f} GB are free; drop --save_probabilities or set TMPDIR to a "
                                     "larger disk")
    # An unlinked temporary file: the mapping keeps its own handle, and the system reclaims the file with the array.
    with tempfile.TemporaryFile(dir=folder) as handle:
        probabilities = np.memmap(handle, dtype=np.float32, mode="w+", shape=shape)
    if not bundle.label_manager.has_regions:
        probabilities[0] = 1.0
    return probabilities


def export_logits(logits: torch.Tensor, bundle: ModelBundle, properties: dict[str, Any],
                  with_probabilities: bool = False, slab_budget_bytes: int = DEFAULT_SLAB_BYTES) -> Exported:
    """Undo preprocessing slab by slab: resample, convert to labels, un-crop, transpose back to the input's axes.

    Peak memory is ``logits`` plus one slab of about ``slab_budget_bytes``, plus the labels (1-2 bytes per input
    voxel); probabilities, when asked for, stream into a temporary file. The current cancel token is checked between
    slabs.
    """
    plans = bundle.plans_manager
    dtype = np.uint8 if len(bundle.label_manager.foreground_labels) < 255 else np.uint16
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"])
    labels = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    probabilities = _probability_file(bundle, properties) if with_probabilities else None
    resampler = crop_resampler(bundle, properties, tuple(logits.shape[1:]))
    if resampler is None:  # nnunetv2's own function, all rows at once: its values are nnU-Net's
        resampled_all = _nnunet_resample(logits, bundle, properties)
        slabs: Iterator[_Slab] = iter([_Slab(0, resampled_all.shape[1], resampled_all, 0.0,
                                             lambda index, values=resampled_all: values[(slice(None), *index.T)])])
        del resampled_all
    else:
        rows_per_slab = slab_rows(resampler, int(logits.shape[0]), slab_budget_bytes)
        slabs = (_slab(resampler, logits, *span) for span in resampler.slabs(rows_per_slab))
    for slab in slabs:
        check_cancelled()
        start, stop, resampled = slab.start, slab.stop, slab.values
        window = (slice(crop[0].start + start, crop[0].start + stop), *crop[1:])
        slab_labels = logits_to_labels(resampled, bundle)
        settle_ties(slab_labels, resampled, bundle, slab.error, slab.exact)  # nnU-Net's labels where rounding decides
        labels[window] = slab_labels.cpu().numpy().astype(dtype, copy=False)
        if probabilities is not None:
            probabilities[(slice(None), *window)] = bundle.label_manager.apply_inference_nonlin(resampled).cpu().numpy()
        del resampled, slab
    labels = np.ascontiguousarray(labels.transpose(plans.transpose_backward))
    if probabilities is not None:
        probabilities = probabilities.transpose([0] + [i + 1 for i in plans.transpose_backward])
    return Exported(labels=labels, probabilities=probabilities)


@dataclass
class _Slab:
    """Output rows [start, stop) of the crop: their resampled logits, how far those may lie from nnU-Net's, and
    nnU-Net's own values at given voxels of the slab (:func:`~.ties.settle_ties`)."""

    start: int
    stop: int
    values: torch.Tensor
    error: float
    exact: Callable[[torch.Tensor], torch.Tensor]


def _slab(resampler: LogitResampler, logits: torch.Tensor, start: int, stop: int) -> _Slab:
    low, high = resampler.input_rows(start, stop)
    rows = logits[:, low:high]
    smallest, largest = torch.aminmax(rows)

    def exact(index: torch.Tensor) -> torch.Tensor:
        return resampler.points(rows, low, index + torch.tensor([start, 0, 0], device=index.device))

    return _Slab(start, stop, resampler.slab(rows, start, stop, low),
                 resampler.error_bound(max(-float(smallest), float(largest))), exact)


def export_with_fallback(logits: torch.Tensor, bundle: ModelBundle, properties: dict[str, Any],
                         with_probabilities: bool, slab_bytes: int, device: torch.device,
                         notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) of ``logits`` on the input grid, slab by slab; when device memory runs out,
    again on the host (with a note). Raises :class:`OutOfMemoryError` when host memory runs out."""
    try:
        exported = export_logits(logits, bundle, properties, with_probabilities, slab_bytes)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        free_device_memory(device)
        if logits.device.type == "cpu":
            raise OutOfMemoryError("export", "out of memory while writing labels on the input grid; close other "
                                             "programs or use a machine with more memory") from None
        notes.append("device memory ran out during export: resampled on the host instead")
        exported = export_logits(logits.cpu(), bundle, properties, with_probabilities, slab_bytes)
    return exported.labels, exported.probabilities

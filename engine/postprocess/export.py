"""Network-grid logits to labels (and probabilities, and the uncertainty map) on the input grid, slab by slab, in
torch on the compute device."""
from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.row_writer import RowWriter
from ..data.slab_file import SlabLabelFile
from ..data.volume import Geometry
from ..errors import DiskSpaceError, OutOfMemoryError
from ..events import check_cancelled
from ..model.bundle import ModelBundle
from ..runtime.memory import free_device_memory, is_out_of_memory
from .agreement import AgreementLabels, agreement_applies
from .labels import labels_and_best
from .resample import ORDERS, LogitResampler, slab_rows
from .resample_window import WindowResampler
from .ties import Exact, settle_ties
from .uncertainty import slab_budget, slab_uncertainty

DEFAULT_SLAB_BYTES = 512 * 2**20
"""Working memory of one export slab unless the memory plan gives another figure."""

_NNUNET_PROBABILITY_RESAMPLER = "resample_data_or_seg_to_shape"
_ZERO_ROWS = 16
"""Rows of background written at a time outside nnU-Net's crop (a label file's memory stays one slab's)."""


@dataclass
class Exported:
    """Labels (z, y, x) on the input grid, and class probabilities (classes, z, y, x) and the uncertainty map (uint8
percent, z, y, x: :mod:`.uncertainty`) if asked for."""

    labels: np.ndarray | None
    """None when the labels went to a file slab by slab (:attr:`labels_file`)."""
    probabilities: np.ndarray | None
    """A view of a temporary file (numpy memmap) when present: it streams, it is not held in memory."""
    uncertainty: np.ndarray | None = None
    labels_file: Path | None = None
    """The label file written slab by slab and published whole (:class:`~..data.slab_file.SlabLabelFile`)."""


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


def slab_wise(bundle: ModelBundle) -> bool:
    """Whether this module computes the model's probability resampling rule slab by slab (else nnunetv2's own
    function resamples the whole grid at once: another resampler, or cubic orders)."""
    name, kwargs = _nnunet_resampling_arguments(bundle)
    return name == _NNUNET_PROBABILITY_RESAMPLER and kwargs["order"] in ORDERS and kwargs["order_z"] in ORDERS


def crop_resampler(bundle: ModelBundle, properties: dict[str, Any], network_shape: tuple[int, ...]) -> LogitResampler | None:
    """The slab-wise resampler from the network grid to the cropped input grid, or None when the model's rule is one
    only nnunetv2's own function computes (see :func:`slab_wise`)."""
    if not slab_wise(bundle):
        return None
    _, kwargs = _nnunet_resampling_arguments(bundle)
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
                  with_probabilities: bool = False, slab_budget_bytes: int = DEFAULT_SLAB_BYTES,
                  with_uncertainty: bool = False) -> Exported:
    """Undo preprocessing slab by slab: resample, convert to labels, un-crop, transpose back to the input's axes.

    Peak memory is ``logits`` plus one slab of about ``slab_budget_bytes``, plus the labels (1-2 bytes per input
    voxel) and the uncertainty map (1 byte) when asked for; probabilities, when asked for, stream into a temporary
    file. The current cancel token is checked between slabs.
    """
    sink = LabelSink(bundle, properties, with_probabilities, with_uncertainty)
    resampler = crop_resampler(bundle, properties, tuple(logits.shape[1:]))
    if resampler is None:  # nnunetv2's own function, all rows at once: its values are nnU-Net's
        resampled_all = _nnunet_resample(logits, bundle, properties)
        slabs: Iterator[Slab] = iter([Slab(0, resampled_all.shape[1], resampled_all, 0.0,
                                             _values_at(resampled_all))])
        del resampled_all
    else:
        rows_per_slab = export_slab_rows(resampler, int(logits.shape[0]), slab_budget_bytes, with_uncertainty)
        agreement = sink.agreement(resampler)
        slabs = (slab_of(resampler, logits, *span, 0, agreement) for span in resampler.slabs(rows_per_slab))
    for slab in slabs:
        check_cancelled()
        sink.write(slab)
        del slab
    return sink.result()


def export_slab_rows(resampler: LogitResampler, heads: int, budget_bytes: int, with_uncertainty: bool) -> int:
    """Output rows per export slab within ``budget_bytes``, the uncertainty map's work included when asked for."""
    if with_uncertainty:
        budget_bytes = slab_budget(budget_bytes, heads, resampler.input_rows_per_output_row())
    return slab_rows(resampler, heads, budget_bytes)


class LabelSink:
    """The label volume (and the probability file, and the uncertainty map) of one case, written slab by slab on the
    cropped input grid, then un-cropped and transposed back to the input's axes by :meth:`result`.

    ``labels_file`` (a path and the input's geometry; only for models without a transpose): the labels go to that
    file as the slabs come (:class:`~..data.slab_file.SlabLabelFile`, compressed and written on a thread of its own:
    :class:`~..data.row_writer.RowWriter`), published whole by :meth:`result`, instead of
    being held; :meth:`abort` removes it."""

    def __init__(self, bundle: ModelBundle, properties: dict[str, Any], with_probabilities: bool,
                 with_uncertainty: bool = False, labels_file: tuple[Path, Geometry] | None = None) -> None:
        self.bundle = bundle
        self.dtype = np.uint8 if len(bundle.label_manager.foreground_labels) < 255 else np.uint16
        self.crop = tuple(slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"])
        self.shape = tuple(int(s) for s in properties["shape_before_cropping"])
        self.file: RowWriter | None = None
        self.labels: np.ndarray | None = None
        self._partial_rows: dict[int, tuple[np.ndarray, int]] = {}
        """File rows written in part (windows of the streaming export's last rows): the row and its voxels written."""
        self._next_file_row = 0
        if labels_file is None:
            self.labels = np.zeros(self.shape, dtype=self.dtype)
        else:
            assert list(bundle.plans_manager.transpose_backward) == list(range(len(self.shape))), "no transpose"
            self.file = RowWriter(SlabLabelFile(labels_file[0], labels_file[1], self.dtype,
                                                self.shape))  # type: ignore[arg-type]
            self._write_zero_rows(self.crop[0].start)  # the rows above nnU-Net's crop
            self._next_file_row = self.crop[0].start
        self.probabilities = _probability_file(bundle, properties) if with_probabilities else None
        self.uncertainty = np.zeros(self.shape, dtype=np.uint8) if with_uncertainty else None
        """0 outside the crop: nnU-Net's background there is certain."""

    def agreement(self, resampler: LogitResampler) -> AgreementLabels | None:
        """The labels-only shortcut for this case's slabs (:mod:`.agreement`), or None where resampled values are
        needed (probabilities, the uncertainty map) or the model's label rule is not an argmax."""
        if self.probabilities is not None or self.uncertainty is not None or not agreement_applies(self.bundle):
            return None
        return AgreementLabels(resampler, self.bundle)

    def write(self, slab: Slab) -> None:
        """The labels (and probabilities, and the uncertainty map) of one slab of resampled logits, in place."""
        bundle, crop = self.bundle, self.crop
        window = (slice(crop[0].start + slab.start, crop[0].start + slab.stop), *crop[1:])
        if slab.window is not None:  # a part of the rows' planes: the streaming export's last rows, labels only
            assert self.probabilities is None and self.uncertainty is None, "windows are for labels only"
            window = (window[0], *(slice(whole.start + part.start, whole.start + part.stop)
                                   for whole, part in zip(crop[1:], slab.window)))
        if slab.labels is not None:  # decided by :mod:`.agreement`: already nnU-Net's labels
            assert self.probabilities is None and self.uncertainty is None, "the shortcut makes labels only"
            self._put_labels(window, slab.labels.cpu().numpy().astype(self.dtype, copy=False))
            return
        assert slab.values is not None and slab.exact is not None
        slab_labels, best = labels_and_best(slab.values, bundle)
        settle_ties(slab_labels, slab.values, bundle, slab.error, slab.exact,  # nnU-Net's labels where rounding decides
                    through_probabilities=self.probabilities is not None, best=best)
        if any(slab.mirrored):
            slab_labels = slab_labels.flip([axis for axis, mirror in zip((-2, -1), slab.mirrored) if mirror])
        self._put_labels(window, slab_labels.cpu().numpy().astype(self.dtype, copy=False))
        if self.probabilities is not None:
            nonlinear = bundle.label_manager.apply_inference_nonlin(slab.values)
            self.probabilities[(slice(None), *window)] = nonlinear.cpu().numpy()
        if self.uncertainty is not None:  # from the same resampled values: no second pass over the sums
            self.uncertainty[window] = slab_uncertainty(slab.values, bundle.label_manager.has_regions).cpu().numpy()

    def _put_labels(self, window: tuple[slice, ...], labels: np.ndarray) -> None:
        if self.file is None:
            assert self.labels is not None
            self.labels[window] = labels
            return
        if window[1:] != self.crop[1:] or self._partial_rows or window[0].start != self._next_file_row:
            self._put_part(window, labels)
            return
        rows = np.zeros((labels.shape[0], *self.shape[1:]), dtype=self.dtype)  # whole file rows: zero outside the crop
        rows[(slice(None), *window[1:])] = labels
        self.file.write(rows)
        self._next_file_row = window[0].stop

    def _put_part(self, window: tuple[slice, ...], labels: np.ndarray) -> None:
        """Labels of a part of some file rows: kept until each row is whole, then written, in order (why: the
        streaming export finishes its last rows window by window as the last tiles run; a file takes whole rows)."""
        assert self.file is not None
        area = math.prod(s.stop - s.start for s in self.crop[1:])
        for offset, row in enumerate(range(window[0].start, window[0].stop)):
            held, written = self._partial_rows.get(row) or (np.zeros(self.shape[1:], dtype=self.dtype), 0)
            held[window[1:]] = labels[offset]
            self._partial_rows[row] = (held, written + labels[offset].size)
        while self._next_file_row in self._partial_rows and self._partial_rows[self._next_file_row][1] >= area:
            self.file.write(self._partial_rows.pop(self._next_file_row)[0][None])
            self._next_file_row += 1

    def _write_zero_rows(self, count: int) -> None:
        assert self.file is not None
        zeros = np.zeros((min(count, _ZERO_ROWS), *self.shape[1:]), dtype=self.dtype)
        for start in range(0, count, _ZERO_ROWS):
            self.file.write(zeros[:min(_ZERO_ROWS, count - start)])

    def abort(self) -> None:
        """Drop the label file being written, if any (a failed or cancelled export): nothing is left of it."""
        if self.file is not None:
            self.file.abort()

    def result(self) -> Exported:
        """The labels (and probabilities, and the uncertainty map) in the input's axis order; a label file gets its
        last rows and is published whole."""
        backward = self.bundle.plans_manager.transpose_backward
        labels = None if self.labels is None else np.ascontiguousarray(self.labels.transpose(backward))
        labels_file = None
        if self.file is not None:
            assert not self._partial_rows, "every row must be whole before the file is"
            self._write_zero_rows(self.shape[0] - self.crop[0].stop)  # the rows below it
            self.file.commit()
            labels_file = self.file.path
        probabilities = self.probabilities
        if probabilities is not None:
            probabilities = probabilities.transpose([0] + [i + 1 for i in backward])
        uncertainty = None if self.uncertainty is None else np.ascontiguousarray(self.uncertainty.transpose(backward))
        return Exported(labels=labels, probabilities=probabilities, uncertainty=uncertainty, labels_file=labels_file)


@dataclass
class Slab:
    """Output rows [start, stop) of the crop: their resampled logits, how far those may lie from nnU-Net's, and
    nnU-Net's own values at given voxels of the slab (:func:`~.ties.settle_ties`); or, from :mod:`.agreement`, only
    their labels (``values`` None)."""

    start: int
    stop: int
    values: torch.Tensor | None
    error: float
    exact: Exact | None
    labels: torch.Tensor | None = None
    window: tuple[slice, slice] | None = None
    """The in-plane part of the rows (output y and x ranges of the crop) where it is not all of them."""
    mirrored: tuple[bool, bool] = (False, False)
    """Whether ``values`` run last to first along y and x (:meth:`~.resample_window.WindowResampler.mirrored`)."""


def slab_of(resampler: LogitResampler, logits: torch.Tensor, start: int, stop: int, offset: int = 0,
            agreement: AgreementLabels | None = None) -> Slab:
    """Output rows [start, stop) resampled from ``logits``, whose rows along axis 0 are input rows ``offset``,
    ``offset + 1``, ... (at least :meth:`~.resample.LogitResampler.input_rows`); with ``agreement``
    (:meth:`LabelSink.agreement`), only their labels where it decides them."""
    low, high = resampler.input_rows(start, stop)
    rows = logits[:, low - offset:high - offset]
    labels = None if agreement is None else agreement.labels(rows, start, stop, low)
    if labels is not None:
        return Slab(start, stop, None, 0.0, None, labels)
    smallest, largest = torch.aminmax(rows)

    def exact(index: torch.Tensor, heads: torch.Tensor | None) -> torch.Tensor:
        return resampler.points(rows, low, index + torch.tensor([start, 0, 0], device=index.device), heads)

    return Slab(start, stop, resampler.slab(rows, start, stop, low),
                 resampler.error_bound(max(-float(smallest), float(largest))), exact)


def window_slab_of(windows: WindowResampler, logits: torch.Tensor, start: int, stop: int, offset: int,
                   window: tuple[slice, slice], magnitude: float) -> Slab:
    """:func:`slab_of` for the in-plane ``window`` (output y and x ranges) of output rows [start, stop):
    ``logits`` are input rows ``offset``, ... of whole planes, and no value the window reads is larger than
    ``magnitude`` in size (:func:`window_magnitude`)."""
    resampler = windows.resampler
    low, high = resampler.input_rows(start, stop)
    rows = logits[:, low - offset:high - offset]
    ys, xs = (window[0].start, window[0].stop), (window[1].start, window[1].stop)
    values = windows.slab(rows, start, stop, low, ys, xs)
    mirrored = windows.mirrored(ys, xs)
    corner = torch.tensor([start, ys[0], xs[0]], device=rows.device)
    last = torch.tensor([0, ys[1] - 1, xs[1] - 1], device=rows.device)

    def exact(index: torch.Tensor, heads: torch.Tensor | None) -> torch.Tensor:
        at = index + corner.to(index.device)
        for axis, mirror in ((1, mirrored[0]), (2, mirrored[1])):
            if mirror:  # the slab runs last to first along this axis
                at[:, axis] = last[axis].to(index.device) - index[:, axis]
        return resampler.points(rows, low, at, heads)

    return Slab(start, stop, values, resampler.error_bound(magnitude), exact, window=window, mirrored=mirrored)


def window_magnitude(windows: WindowResampler, rows: torch.Tensor, ys: tuple[int, int], xs: tuple[int, int]) -> float:
    """The largest size of the values of ``rows`` (input rows of whole planes) that the output window ``ys`` x
    ``xs`` reads (:meth:`~.resample_window.WindowResampler.inputs`)."""
    smallest, largest = torch.aminmax(rows[(slice(None), slice(None), *windows.inputs(ys, xs))])
    return max(-float(smallest), float(largest))


def _values_at(values: torch.Tensor) -> Exact:
    """The :data:`~.ties.Exact` of values that are nnU-Net's already: looked up, of every head or of one per voxel."""
    def exact(index: torch.Tensor, heads: torch.Tensor | None) -> torch.Tensor:
        return values[(slice(None) if heads is None else heads, *index.T)]
    return exact


def export_with_fallback(logits: torch.Tensor, bundle: ModelBundle, properties: dict[str, Any],
                         with_probabilities: bool, slab_bytes: int, device: torch.device,
                         notes: list[str], with_uncertainty: bool = False) -> Exported:
    """Labels (and probabilities, and the uncertainty map) of ``logits`` on the input grid, slab by slab; when device
    memory runs out, again on the host (with a note). Raises :class:`OutOfMemoryError` when host memory runs out."""
    try:
        exported = export_logits(logits, bundle, properties, with_probabilities, slab_bytes, with_uncertainty)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        free_device_memory(device)
        if logits.device.type == "cpu":
            raise OutOfMemoryError("export", "out of memory while writing labels on the input grid; close other "
                                             "programs or use a machine with more memory") from None
        notes.append("device memory ran out during export: resampled on the host instead")
        exported = export_logits(logits.cpu(), bundle, properties, with_probabilities, slab_bytes, with_uncertainty)
    return exported

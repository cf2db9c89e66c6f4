"""Memory planned before the work: from a job's real sizes and the memory there really is, where the logit sums
live, how large an export slab is, or a refusal (exit 3) that says what the job needs and what to try.

The stages and what each holds at its peak (bytes; ``heads`` = the model's output channels, ``N`` = voxels of the
network grid, ``V`` = voxels of the input, ``C`` = input channels):

- preprocessing: the cropped input in float32 plus its resampled copy and nnU-Net's intermediates,
  ``C * 4 * (V + 2 N)``;
- sliding window: the network-grid data ``C * 4 * N`` (on the compute device), the logit and weight sums
  ``(heads + 1) * N * 2|4``, the forward pass's activations;
- export: the averaged logits (the sums' memory, reused), one slab, and the labels (1-2 bytes per input voxel, three
  times: on the crop, un-cropped, transposed back), plus the writer's copy; with the uncertainty map, its byte per
  input voxel the same four times (its slab work stays within the slab: :func:`~..postprocess.uncertainty.slab_budget`).

Streaming (``W`` = network voxels of the window: the ring of rows unfinished tiles touch, the final rows waiting for
the export thread and its halo) holds ``(heads + 1) * W * 2|4`` for the sums in place of the whole grid's, and the
export's slab and labels during the sliding window, since the export runs beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import OutOfMemoryError
from .memory import device_available_bytes, host_available_bytes

HEADROOM = 0.85
"""Share of the available memory a plan may use: the rest is for the libraries, the allocator and other programs."""
MIN_SLAB_BYTES = 32 * 2**20
MAX_SLAB_BYTES = 512 * 2**20
GB = 1e9


@dataclass(frozen=True)
class JobSize:
    """The sizes one case brings, known before preprocessing."""

    input_voxels: int
    channels: int
    network_voxels: int
    heads: int
    label_bytes: int
    """Bytes per voxel of the label map (1 for up to 254 labels, else 2)."""
    activation_bytes: int
    """The forward pass's working memory for one batch (an estimate from the patch and batch size)."""
    window_voxels: int = 0
    """Network voxels a streaming run holds at most (0: the job cannot stream)."""
    window_rows: int = 0
    """The streaming ring's network slices (for the refusal's words)."""
    uncertainty: bool = False
    """Whether the export computes the uncertainty map too (a uint8 volume on the input grid)."""

    @property
    def output_bytes(self) -> int:
        """Bytes per input voxel of the export's outputs: the label map's, plus the uncertainty map's byte."""
        return self.label_bytes + (1 if self.uncertainty else 0)


class Streaming:
    """How a plan may use a streaming window (:mod:`~tilewise.engine.sliding.window`), per placement of the sums."""

    PREFER = "prefer"
    """Stream wherever it fits (the default where it is not slower)."""
    FALLBACK = "fallback"
    """The whole-volume sums where they fit, streaming only where they do not."""
    NEVER = "never"


@dataclass(frozen=True)
class MemoryPlan:
    """Where the sums go (index into the runner's placement order), the export slab, and the peak it expects."""

    placement_index: int
    slab_bytes: int
    peak_host_bytes: int
    peak_device_bytes: int
    notes: list[str] = field(default_factory=list)
    streaming: bool = False
    """The sums live in a streaming window and the export runs beside the sliding window."""


def _stage_peaks(job: JobSize, sums_per_voxel: int, on_device: bool, slab: int,
                 streaming: bool = False) -> tuple[int, int]:
    """(host, device) peaks for one placement of the sums (``sums_per_voxel`` bytes per head and voxel), for the
    whole grid's sums or a streaming window's."""
    data = job.channels * 4 * job.network_voxels
    preprocessing = job.channels * 4 * (job.input_voxels + 2 * job.network_voxels)
    labels = 4 * job.output_bytes * job.input_voxels
    if streaming:  # the export's slab and labels live while the tiles run
        window = (job.heads + 1) * job.window_voxels * sums_per_voxel + slab
        device_sliding = data + job.activation_bytes + (window if on_device else 0)
        host_sliding = data + job.output_bytes * job.input_voxels + (0 if on_device else window)
        return max(preprocessing, host_sliding, labels), device_sliding
    sums = (job.heads + 1) * job.network_voxels * sums_per_voxel
    device_sliding = data + job.activation_bytes + (sums if on_device else 0)
    device_export = (sums + slab) if on_device else 0
    host_sliding = data + (0 if on_device else sums)
    host_export = labels + (0 if on_device else sums + slab)
    return max(preprocessing, host_sliding, host_export), max(device_sliding, device_export)


def _modes(job: JobSize, streaming: str) -> tuple[bool, ...]:
    """Whether to try streaming, for each placement, in the order ``streaming`` asks."""
    if job.window_voxels <= 0 or streaming == Streaming.NEVER:
        return (False,)
    return (True, False) if streaming == Streaming.PREFER else (False, True)


def plan_memory(job: JobSize, compute_device: torch.device, placements: list[tuple[torch.device, torch.dtype]],
                host_available: int, device_available: int, streaming: str = Streaming.NEVER) -> MemoryPlan:
    """The first placement (in the order given) whose peaks fit, with the largest slab up to :data:`MAX_SLAB_BYTES`;
    for each placement, a streaming window first or last as ``streaming`` says (:class:`Streaming`; a job with no
    ``window_voxels`` never streams).

    ``placements`` is the runner's order, e.g. float32 then float16 on the device, then in host memory. On the CPU,
    host and device are the same memory (``device_available`` is ignored). Raises :class:`OutOfMemoryError` with
    one line when none fits.
    """
    on_cpu = compute_device.type == "cpu"
    host_budget = int(host_available * HEADROOM)
    device_budget = host_budget if on_cpu else int(device_available * HEADROOM)
    for index, (device, dtype) in enumerate(placements):
        per_voxel = torch.empty((), dtype=dtype).element_size()
        on_device = device.type != "cpu"
        for stream in _modes(job, streaming):
            for slab in _slab_sizes(stream):
                host, dev = _stage_peaks(job, per_voxel, on_device and not on_cpu, slab, stream)
                if on_cpu:
                    host, dev = max(host, dev), 0
                if host <= host_budget and dev <= device_budget:
                    return MemoryPlan(index, slab, host, dev, _notes(index, dtype, on_device, stream, streaming), stream)
    raise _refusal(job, host_available, on_cpu)


def _slab_sizes(stream: bool) -> tuple[int, ...]:
    """Export slab sizes to try, largest first. A streaming run, planned to bound memory, starts at 128 MB: its slab
    lives beside the tiles, and the export is as fast with 64 MB as with 512 MB slabs (measured on a 60-slice crop
    of the 105-output model's CT: 9.5-10.8 s for each)."""
    return (128 * 2**20, MIN_SLAB_BYTES) if stream else (MAX_SLAB_BYTES, 128 * 2**20, MIN_SLAB_BYTES)


def _notes(index: int, dtype: torch.dtype, on_device: bool, stream: bool, streaming: str) -> list[str]:
    """What a plan says about itself: sums moved to fit, or a stream the caller did not prefer."""
    where = "on the device" if on_device else "in host memory"
    notes = [] if index == 0 else [f"logit sums planned in {str(dtype).removeprefix('torch.')} {where} to fit memory"]
    if stream and streaming != Streaming.PREFER:
        notes.append("the whole volume's logit sums do not fit: tiles run slab by slab in nnU-Net's order")
    return notes


def _refusal(job: JobSize, host_available: int, on_cpu: bool) -> OutOfMemoryError:
    """The one line for a job that fits nowhere: its least need (streaming's where it can stream), what there is."""
    host, _ = _stage_peaks(job, 2, False, MIN_SLAB_BYTES)
    sums = (job.heads + 1) * job.network_voxels * 2
    needs = (f"logit sums for {job.heads} outputs on a {job.network_voxels / 1e6:.0f} M-voxel network grid: "
             f"{sums / GB:.1f} GB in float16")
    if job.window_voxels > 0:
        host, _ = _stage_peaks(job, 2, False, MIN_SLAB_BYTES, streaming=True)
        window = (job.heads + 1) * job.window_voxels * 2
        needs += (f"; streaming, a window of {job.window_rows} network slices: {window / GB:.1f} GB in float16 with "
                  "the rows waiting for export")
    return OutOfMemoryError(
        "memory plan", f"this job needs about {host / GB:.1f} GB of memory at the least ({needs}), "
        f"{host_available / GB:.1f} GB are available; use a coarser model (3d_lowres), a machine with more memory"
        + ("" if on_cpu else ", or --device cpu"))


def check_forward_fits(patch_size: tuple[int, ...], channels: int, activation_bytes: int, batch_size: int,
                       compute_device: torch.device) -> None:
    """Raise :class:`OutOfMemoryError` (one line) when a single forward pass of one tile (its input and the network's
    activations, ``activation_bytes`` for ``batch_size`` tiles) cannot fit in the memory there is, on the device or
    in host memory (the runner falls back to smaller batches and host memory, so only a tile that fits nowhere is
    refused); it says what to try, and never suggests the CPU to a job already on it."""
    voxels = 1
    for size in patch_size:
        voxels *= int(size)
    one_tile = channels * 4 * voxels + activation_bytes // max(batch_size, 1)
    on_cpu = compute_device.type == "cpu"
    host = host_available_bytes()
    available = host if on_cpu else max(host, device_available_bytes(compute_device))
    if one_tile <= available * HEADROOM:
        return
    tile = " x ".join(str(int(s)) for s in patch_size)
    raise OutOfMemoryError("memory plan", f"one forward pass of the model's {tile}-voxel tile (plans.json's "
                           f"patch_size) needs about {one_tile / GB:,.1f} GB for its input and the network's "
                           f"activations, but {available / GB:.1f} GB are available; this model's tile is too large "
                           "for this machine" + ("" if on_cpu else "; try --batch-size 1"))


@dataclass(frozen=True)
class MemoryBudget:
    """The memory a case is planned against: host and compute-device bytes available (a batch takes them once,
    when it starts)."""

    host_bytes: int
    device_bytes: int

    @classmethod
    def available_now(cls, device: torch.device) -> MemoryBudget:
        """The host's and ``device``'s available memory at this moment."""
        return cls(host_available_bytes(), device_available_bytes(device))

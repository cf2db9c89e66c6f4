"""Where the Gaussian-weighted sums of tile logits live, and in which precision: one strategy per placement.

Every placement weights tiles exactly as nnU-Net does: the Gaussian is nnU-Net's ``compute_gaussian`` built in
float16 (its default) with its zeros clamped after the cast, so float32 sums hold nnU-Net's float16-rounded weights
and float16 sums are nnU-Net's own. The placements, in the order the memory plan prefers them:

- float32 on the compute device (the default: nnU-Net's algorithm with float32 sums);
- float16 on the compute device (nnU-Net's own sums; half the memory);
- float32 in host memory; float16 in host memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..events import Box

ACCUMULATOR_DTYPES = (torch.float32, torch.float16)


@dataclass(frozen=True)
class Placement:
    """Where the sums live and their dtype."""

    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        """E.g. 'float16 in host memory' or 'float32 on cuda:0'."""
        where = "in host memory" if self.device.type == "cpu" else f"on {self.device}"
        return f"{str(self.dtype).removeprefix('torch.')} {where}"

    def bytes_for(self, heads: int, voxels: int) -> int:
        """Memory of the logit sums plus the weight sums for ``voxels`` network-grid voxels."""
        return (heads + 1) * voxels * torch.empty((), dtype=self.dtype).element_size()


def placements(compute_device: torch.device) -> list[Placement]:
    """Every placement for a run on ``compute_device``, most preferred first (on the CPU, device is the host)."""
    host = torch.device("cpu")
    on_device = [Placement(compute_device, dtype) for dtype in ACCUMULATOR_DTYPES]
    if compute_device.type == "cpu":
        return on_device
    return on_device + [Placement(host, dtype) for dtype in ACCUMULATOR_DTYPES]


def nnunet_gaussian(patch_size: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """nnU-Net's Gaussian importance map (sigma = patch / 8, peak 10) as nnU-Net computes it: in float16, its zeros
    clamped to the smallest non-zero float16 value after the cast; then held in ``dtype``."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    gaussian = compute_gaussian(tuple(patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16,
                                device=torch.device("cpu"))
    return gaussian.to(device=device, dtype=dtype)


class Accumulator:
    """Gaussian-weighted sums of (heads, *tile) logits over a (z, y, x) network grid in one :class:`Placement`.

    Allocating it may raise an out-of-memory error (the runner then tries the next placement).
    """

    def __init__(self, heads: int, spatial: tuple[int, ...], patch_size: tuple[int, ...], placement: Placement) -> None:
        self.placement = placement
        self.gaussian = nnunet_gaussian(patch_size, placement.dtype, placement.device)
        self.logits = torch.zeros((heads, *spatial), dtype=placement.dtype, device=placement.device)
        self.weights = torch.zeros(spatial, dtype=placement.dtype, device=placement.device)

    def add(self, region: tuple[int | slice, ...], prediction: torch.Tensor) -> None:
        """Add one tile's float32 logits (heads, *tile) at ``region``: as nnU-Net, the product with the Gaussian is
        taken in float32, in place in ``prediction`` (no second tile of logits in memory), and rounded into the
        sums' dtype."""
        prediction = prediction.to(self.placement.device)
        self.logits[(slice(None), *region)] += prediction.mul_(self.gaussian)
        self.weights[region] += self.gaussian

    def tile_logits(self, box: Box) -> torch.Tensor:
        """The running (unnormalised) sums of ``box``, in float32 (provisional labels only need their argmax)."""
        return self.logits[(slice(None), *box)].float()

    def fill_uncovered(self, background: torch.Tensor) -> None:
        """Give voxels that no tile covered ``background`` logits (weight 1), so they read as background."""
        uncovered = self.weights == 0
        if not bool(uncovered.any()):
            return
        for head in range(self.logits.shape[0]):
            self.logits[head][uncovered] = float(background[head])
        self.weights[uncovered] = 1

    def finalise(self) -> torch.Tensor:
        """The weighted mean (heads, z, y, x), divided in place in the sums' dtype as nnU-Net divides, and returned
        in that dtype (export reads float16 sums slab by slab, so they never need a float32 copy).

        May be called again after an out-of-memory error (then :meth:`to_host` first); the accumulator is spent once
        it returns. Raises RuntimeError on a non-finite value.
        """
        if self.weights is not None:
            torch.div(self.logits, self.weights, out=self.logits)  # in place: nothing allocated
            self.weights = None  # type: ignore[assignment]
        for head in self.logits:  # per head: the check allocates one head's mask, not the whole grid's
            if not bool(torch.isfinite(head).all()):
                raise RuntimeError("non-finite logits after accumulation")
        result, self.logits = self.logits, None  # type: ignore[assignment]
        return result

    def to_host(self) -> None:
        """Move the sums (or the divided logits) to host memory, keeping their dtype."""
        self.logits = self.logits.cpu()
        if self.weights is not None:
            self.weights = self.weights.cpu()
        self.gaussian = self.gaussian.cpu()
        self.placement = Placement(torch.device("cpu"), self.placement.dtype)

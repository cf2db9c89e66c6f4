"""Streaming sliding window: the window's rows are the whole-volume engine's bit for bit, and a streamed run's labels
(export beside the tiles) are the whole-volume run's voxel for voxel, on every model kind and both backends."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import model_factory
from tilewise.engine import Predictor, get_preset, read_volume
from tilewise.engine.preprocess.grid_mapping import GridMapper
from tilewise.engine.sliding.accumulators import Placement
from tilewise.engine.sliding.plan import plan_tiles
from tilewise.engine.sliding.runner import SlidingWindowRunner
from tilewise.engine.sliding.window import SlabWindow, window_rows

CPU = torch.device("cpu")


class _FixedBackend:
    """A deterministic stand-in network: logits are a smooth function of the input and position."""

    name, precision, device, variable_batch = "fixed", "fp32", CPU, True
    passes_per_tile = 1
    convert_seconds, cache_events, notes = 0.0, [], []

    def __init__(self, heads: int = 3) -> None:
        self.heads = heads

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        scale = torch.arange(1, self.heads + 1, dtype=torch.float32).reshape(1, -1, *([1] * (inputs.ndim - 2)))
        return torch.sin(inputs[:, :1] * scale + scale) * 7.3

    def describe(self) -> str:
        return "fixed"


def _grid(shape: tuple[int, int, int]) -> GridMapper:
    return GridMapper(transpose_forward=(0, 1, 2), crop_start=(0, 0, 0), crop_shape=shape, network_shape=shape,
                      pad_before=(0, 0, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("patch", "step", "batch", "skip"), [
    pytest.param((12, 16, 16), 0.5, 1, False, id="3d-batch1"),
    pytest.param((12, 16, 16), 0.5, 5, False, id="3d-batch-spans-steps"),
    pytest.param((10, 16, 16), 0.33, 2, True, id="3d-small-step-skipping"),
    pytest.param((16, 16), 0.5, 3, False, id="2d"),
])
def test_released_rows_equal_the_whole_volume_sums_bit_for_bit(dtype, patch, step, batch, skip) -> None:
    shape = (37, 26, 30)
    data = torch.from_numpy(np.random.default_rng(4).normal(size=(1, *shape)).astype(np.float32))
    skipped = (lambda tile: tile.index % 4 == 1) if skip else None

    def runner() -> SlidingWindowRunner:
        return SlidingWindowRunner(_FixedBackend(), patch, step, batch, 3, lambda x: x.argmax(0), skip_tile=skipped,
                                   placement_order=[Placement(CPU, dtype)], nnunet_order=True)

    whole = runner().run(data, _grid(shape)).logits
    released: list[tuple[int, torch.Tensor]] = []
    streamed = runner().run_streaming(data, _grid(shape), lambda first, rows: released.append((first, rows)))
    assert streamed.logits is None and len(released) > 2, "rows must go out as they become final"
    assert [first for first, _ in released] == sorted({first for first, _ in released}) and released[0][0] == 0
    rows = torch.cat([r for _, r in released], dim=1)
    assert rows.dtype == whole.dtype and torch.equal(rows, whole)


def test_the_ring_holds_about_a_patch_and_a_step_of_slices() -> None:
    grid, patch = (300, 96, 96), (64, 64, 64)
    tiles = plan_tiles(grid, patch, 0.5)
    assert window_rows(tiles, 1) <= 64 * 1.5 + 1
    window = SlabWindow(3, grid, patch, Placement(CPU, torch.float32), window_rows(tiles, 2))
    assert window.logits.shape[1] < grid[0] / 2


@pytest.fixture(scope="module")
def predictors(make_model):
    """Whole-volume and streaming predictors per (kind, mirroring, backend), loaded once."""
    cache: dict = {}

    def get(kind: str, mirroring: bool, backend: str) -> tuple[Predictor, Predictor]:
        key = (kind, mirroring, backend)
        if key not in cache:
            preset = get_preset("reference").with_overrides(mirroring=mirroring, backend=backend)
            model = make_model(kind)
            cache[key] = (Predictor(model, preset, device="cpu", streaming=False),
                          Predictor(model, preset, device="cpu", streaming=True))
        return cache[key]

    return get


STREAMED_KINDS = [
    pytest.param("3d", {}, True, id="3d_fullres-mirrored"),
    pytest.param("2d", {}, False, id="2d"),
    pytest.param("aniso", {"spacing": (0.8, 0.8, 4.0), "shape": (14, 60, 52)}, False, id="anisotropic-separate-z"),
    pytest.param("transposed", {}, False, id="transposed-axes"),
    pytest.param("two_channel", {}, False, id="two-channel"),
    pytest.param("regions", {}, False, id="region-based"),
    pytest.param("3d", {"direction": (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), "origin": (10.0, -20.0, 5.0),
                        "spacing": (1.2, 0.9, 1.5)}, False, id="oblique-direction"),
    pytest.param("resenc", {}, False, id="residual-encoder"),
    pytest.param("lowres", {}, False, id="3d_lowres"),
]


@pytest.mark.parametrize("backend", ["torch", "openvino"])
@pytest.mark.parametrize(("kind", "case_kwargs", "mirroring"), STREAMED_KINDS)
def test_streamed_labels_equal_the_whole_volume_labels(predictors, tmp_path: Path, kind: str, case_kwargs: dict,
                                                       mirroring: bool, backend: str) -> None:
    volume = read_volume(model_factory.case_files(tmp_path, "case", kind, **case_kwargs))
    whole_predictor, streaming_predictor = predictors(kind, mirroring, backend)
    whole = whole_predictor.predict(volume)
    streamed = streaming_predictor.predict(volume)

    case = streaming_predictor.plan_case(volume, with_probabilities=False)
    assert case.plan is not None and case.plan.streaming
    assert streamed.tiles == whole.tiles and streamed.forward_passes == whole.forward_passes
    assert streamed.labels.shape == whole.labels.shape
    assert int((streamed.labels != whole.labels).sum()) == 0, "streaming must not change a voxel"
    assert len(np.unique(whole.labels)) > 1

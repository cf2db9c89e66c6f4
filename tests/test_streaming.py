"""Streaming sliding window: the window's rows are the whole-volume engine's bit for bit, and a streamed run's labels
(export beside the tiles) are the whole-volume run's voxel for voxel, on every model kind and both backends."""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import model_factory
from tilewise.engine import Cancelled, CancelToken, FocusToken, Predictor, TileEvent, get_preset, read_volume
from tilewise.engine.errors import OutOfMemoryError
from tilewise.engine.preprocess.grid_mapping import GridMapper
from tilewise.engine.runtime.memory_plan import JobSize, Streaming, plan_memory
from tilewise.engine.sliding.accumulators import Placement
from tilewise.engine.sliding.plan import plan_tiles
from tilewise.engine.sliding.runner import SlidingWindowRunner
from tilewise.engine.sliding.window import SlabWindow, window_rows
from tilewise.engine.streaming_stage import streaming_mode

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


@pytest.mark.parametrize(("patch", "step", "batch", "skip"), [
    pytest.param((12, 16, 16), 0.5, 1, False, id="3d-batch1"),
    pytest.param((12, 16, 16), 0.5, 5, False, id="3d-batch-spans-steps"),
    pytest.param((10, 16, 16), 0.33, 2, True, id="3d-small-step-skipping"),
])
def test_the_last_rows_go_out_column_by_column_bit_for_bit(patch, step, batch, skip) -> None:
    shape = (37, 26, 30)
    data = torch.from_numpy(np.random.default_rng(5).normal(size=(1, *shape)).astype(np.float32))
    skipped = (lambda tile: tile.index % 4 == 1) if skip else None

    def runner() -> SlidingWindowRunner:
        return SlidingWindowRunner(_FixedBackend(), patch, step, batch, 3, lambda x: x.argmax(0), skip_tile=skipped,
                                   placement_order=[Placement(CPU, torch.float32)], nnunet_order=True)

    whole = runner().run(data, _grid(shape)).logits
    released: list[tuple[int, torch.Tensor]] = []
    updates: list[tuple[np.ndarray, torch.Tensor]] = []
    last_next: list[bool] = []

    def on_plane(pieces: list[tuple[int, torch.Tensor]], columns: np.ndarray, last_batch_next: bool) -> None:
        assert [first for first, _ in pieces][0] == sum(rows.shape[1] for _, rows in released)
        updates.append((columns.copy(), torch.cat([rows for _, rows in pieces], dim=1).clone()))
        last_next.append(last_batch_next)

    runner().run_streaming(data, _grid(shape), lambda first, rows: released.append((first, rows)), on_plane=on_plane)
    first = sum(rows.shape[1] for _, rows in released)
    assert 0 < first < shape[0] and torch.equal(torch.cat([r for _, r in released], dim=1), whole[:, :first])
    assert len(updates) > 2 and (updates[-1][0] == shape[2]).all() and not (updates[-2][0] == shape[2]).all()
    assert last_next == [False] * (len(updates) - 2) + [True, False], "said once: before the last batch"
    for columns, rows in updates:  # every column called final holds the whole-volume engine's average already
        for y in range(shape[1]):
            assert torch.equal(rows[:, :, y, :columns[y]], whole[:, first:, y, :columns[y]]), (y, columns[y])


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


def test_probabilities_stream_too_and_equal_the_whole_volume_ones(ct_model: Path, ct_case: Path) -> None:
    volume = read_volume(ct_case)
    preset = get_preset("reference").with_overrides(mirroring=False, backend="torch")
    whole = Predictor(ct_model, preset, device="cpu", streaming=False).predict(volume, with_probabilities=True)
    streaming = Predictor(ct_model, preset, device="cpu", streaming=True)
    streamed = streaming.predict(volume, with_probabilities=True)
    assert streaming.plan_case(volume, with_probabilities=True).plan.streaming  # type: ignore[union-attr]
    assert whole.probabilities is not None and streamed.probabilities is not None
    assert np.array_equal(streamed.labels, whole.labels)
    assert np.array_equal(np.asarray(streamed.probabilities), np.asarray(whole.probabilities))


def _export_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "tilewise-export"]


def test_cancel_mid_stream_stops_the_export_thread_and_leaves_nothing(ct_model: Path, tmp_path: Path) -> None:
    case = model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(64, 80, 72), seed=5)
    volume = read_volume(case)
    predictor = Predictor(ct_model, get_preset("preview").with_overrides(tile_step=0.5), device="cpu", streaming=True)
    token = CancelToken()
    seen: list[TileEvent] = []

    def on_event(event: TileEvent) -> None:
        seen.append(event)
        if event.done == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        predictor.predict(volume, on_event=on_event, cancel=token)
    assert len(seen) == 3 and seen[0].total > 3
    assert not _export_threads()
    after = predictor.predict(volume)
    whole = Predictor(ct_model, get_preset("preview").with_overrides(tile_step=0.5), device="cpu",
                      streaming=False).predict(volume)
    assert np.array_equal(after.labels, whole.labels)


def test_an_export_failure_reaches_the_caller_and_ends_the_thread(ct_model: Path, ct_case: Path,
                                                                  monkeypatch) -> None:
    from tilewise.engine.postprocess import export as export_module

    def broken(self, slab) -> None:
        raise ValueError("disk on fire")

    monkeypatch.setattr(export_module.LabelSink, "write", broken)
    predictor = Predictor(ct_model, get_preset("preview"), device="cpu", streaming=True)
    with pytest.raises(ValueError, match="disk on fire"):
        predictor.predict(read_volume(ct_case))
    assert not _export_threads()


def test_events_and_provisional_labels_while_streaming(ct_model: Path, tmp_path: Path) -> None:
    case = model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(64, 80, 72), seed=5)
    events: list[TileEvent] = []
    result = Predictor(ct_model, get_preset("fast").with_overrides(tile_step=0.5), device="cpu",
                       streaming=True).predict(read_volume(case), on_event=events.append, provisional_labels=True)
    assert [e.done for e in events] == list(range(1, result.tiles + 1))
    assert [e.tile_index for e in events] == sorted(e.tile_index for e in events), "nnU-Net's order"
    assert all(e.labels is not None for e in events if e.input_box is not None)


def test_the_viewers_slice_priority_and_unknown_probabilities_keep_the_whole_volume(ct_model: Path,
                                                                                    ct_case: Path) -> None:
    volume = read_volume(ct_case)
    predictor = Predictor(ct_model, get_preset("preview"), device="cpu", streaming=True)
    assert predictor.plan_case(volume, with_probabilities=False).plan.streaming  # type: ignore[union-attr]
    assert not predictor.plan_case(volume, with_probabilities=False, focus=True).plan.streaming  # type: ignore[union-attr]
    assert not predictor.plan_case(volume).plan.streaming  # type: ignore[union-attr]  # finish may want probabilities
    focused = predictor.predict(volume, focus=FocusToken())
    assert np.array_equal(focused.labels, predictor.predict(volume).labels)


# ---- the memory plan ---------------------------------------------------------------------------------------------

_FP = [(CPU, torch.float32), (CPU, torch.float16)]


def _job(network_voxels: int, window_voxels: int, heads: int = 105) -> JobSize:
    return JobSize(input_voxels=512 * 512 * 300, channels=1, network_voxels=network_voxels, heads=heads,
                   label_bytes=1, activation_bytes=400 * 2**20, window_voxels=window_voxels, window_rows=96)


def test_the_plan_streams_where_the_whole_volume_does_not_fit_and_where_it_is_preferred() -> None:
    grid = 300 * 400 * 400
    job = _job(grid, 160 * 400 * 400)
    roomy = plan_memory(job, CPU, _FP, 200 * 10**9, 0, Streaming.FALLBACK)
    assert not roomy.streaming and roomy.placement_index == 0
    # 106 x 48 M x 4 B = 20 GB of float32 sums do not fit in 85 % of 24 GB: streaming keeps float32
    tight = plan_memory(job, CPU, _FP, 24 * 10**9, 0, Streaming.FALLBACK)
    assert tight.streaming and tight.placement_index == 0 and tight.notes
    assert tight.peak_host_bytes < roomy.peak_host_bytes
    assert plan_memory(job, CPU, _FP, 24 * 10**9, 0, Streaming.NEVER).placement_index == 1  # float16 sums
    preferred = plan_memory(job, CPU, _FP, 200 * 10**9, 0, Streaming.PREFER)
    assert preferred.streaming and not preferred.notes
    assert preferred.slab_bytes <= 128 * 2**20 < roomy.slab_bytes, "a streaming export's slab is kept small"
    with pytest.raises(OutOfMemoryError):
        plan_memory(job, CPU, _FP, 10 * 10**9, 0, Streaming.NEVER)
    unstreamable = replace(job, window_voxels=0)
    assert not plan_memory(unstreamable, CPU, _FP, 200 * 10**9, 0, Streaming.PREFER).streaming


def test_a_predictor_streams_by_default_wherever_the_run_allows_it() -> None:
    """Predictor(streaming=True), the default, prefers the window where the caller says whether probabilities will
    be wanted and no slice priority steers the tiles; otherwise a window only where the whole-volume sums do not fit
    (rather than float16 sums or a refusal: the plan above). False never streams."""
    assert streaming_mode(True, False, focus=False) == Streaming.PREFER
    assert streaming_mode(True, True, focus=False) == Streaming.PREFER
    assert streaming_mode(True, None, focus=False) == Streaming.FALLBACK  # probabilities not known yet
    assert streaming_mode(True, False, focus=True) == Streaming.FALLBACK  # the viewer's slice-first order
    assert streaming_mode(False, False, focus=False) == Streaming.NEVER


def test_a_refusal_names_the_window_too() -> None:
    job = _job(900 * 800 * 800, 200 * 800 * 800)
    with pytest.raises(OutOfMemoryError) as raised:
        plan_memory(job, CPU, _FP, 24 * 10**9, 0, Streaming.FALLBACK)
    message = str(raised.value)
    assert raised.value.exit_code == 3 and "\n" not in message
    assert "a window of 96 network slices" in message and "24.0 GB are available" in message

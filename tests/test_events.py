"""Tile events, cancellation and re-prioritisation: the contract the viewer depends on."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import model_factory
from tilewise.engine import Cancelled, CancelToken, FocusToken, Predictor, TileEvent, get_preset, read_volume


@pytest.fixture
def big_case(tmp_path: Path) -> Path:
    return model_factory.make_case(tmp_path / "big_0000.nii.gz", "3d", shape=(64, 80, 72), seed=5)


def test_events_cover_every_tile_exactly_once(ct_model: Path, big_case: Path) -> None:
    volume = read_volume(big_case)
    events: list[TileEvent] = []
    result = Predictor(ct_model, get_preset("fast").with_overrides(tile_step=0.5), device="cpu").predict(
        volume, on_event=events.append, provisional_labels=True
    )
    total = events[0].total
    assert total == result.tiles > 1
    assert [e.done for e in events] == list(range(1, total + 1))
    assert sorted(e.tile_index for e in events) == list(range(total))
    assert all(e.total == total for e in events)
    assert events[-1].eta_s == 0.0
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(events, events[1:]))
    covered = np.zeros(volume.shape, dtype=bool)
    for event in events:
        assert event.input_box is not None and event.labels is not None
        assert event.labels.shape == tuple(s.stop - s.start for s in event.input_box)
        covered[event.input_box] = True
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in result.properties["bbox_used_for_cropping"])
    assert covered[crop].all(), "the tiles' input regions must cover the whole cropped input"


def test_provisional_labels_of_last_tile_agree_with_final_labels(ct_model: Path, big_case: Path) -> None:
    volume = read_volume(big_case)
    events: list[TileEvent] = []
    result = Predictor(ct_model, get_preset("preview"), device="cpu").predict(
        volume, on_event=events.append, provisional_labels=True
    )
    # With tile step 1.0 a tile's region is final once it has run; nearest vs linear resampling may differ at edges.
    agreement = [float((e.labels == result.labels[e.input_box]).mean()) for e in events]
    assert min(agreement) > 0.9


def test_tiles_run_in_nnunet_order_by_default(ct_model: Path, big_case: Path) -> None:
    """Without a slice to put first, tiles run as nnU-Net's predictor runs them: slowest axis outermost, so the
    float32 sums of every voxel are added in nnU-Net's order (and a streaming run's slabs finish first to last)."""
    events: list[TileEvent] = []
    Predictor(ct_model, get_preset("fast").with_overrides(tile_step=0.5), device="cpu").predict(
        read_volume(big_case), on_event=events.append
    )
    starts = [tuple(s.start for s in e.network_box) for e in events]
    assert len({start[0] for start in starts}) > 1, "the case must need several tile steps along the slowest axis"
    assert [e.tile_index for e in events] == list(range(len(events)))
    assert starts == sorted(starts)


def test_cancel_stops_within_one_batch_and_returns_nothing(ct_model: Path, big_case: Path) -> None:
    predictor = Predictor(ct_model, get_preset("reference"), device="cpu")
    token = CancelToken()
    seen: list[TileEvent] = []

    def on_event(event: TileEvent) -> None:
        seen.append(event)
        if event.done == 2:
            token.cancel()

    volume = read_volume(big_case)
    with pytest.raises(Cancelled):
        predictor.predict(volume, on_event=on_event, cancel=token)
    assert len(seen) == 2, "no batch may start after the cancel"
    assert seen[0].total > 2
    # the cancelled run left nothing behind in the predictor: a full run afterwards equals a fresh predictor's
    after = predictor.predict(volume)
    fresh = Predictor(ct_model, get_preset("reference"), device="cpu").predict(volume)
    assert after.tiles == fresh.tiles == seen[0].total
    assert np.array_equal(after.labels, fresh.labels)


def test_cancel_from_another_thread(ct_model: Path, big_case: Path) -> None:
    predictor = Predictor(ct_model, get_preset("reference"), device="cpu")
    token = CancelToken()
    first_tile = threading.Event()
    outcome: list[BaseException | object] = []

    def on_event(event: TileEvent) -> None:
        first_tile.set()
        deadline = time.monotonic() + 30  # hold the run mid-way until the other thread has cancelled
        while not token.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)

    def work() -> None:
        try:
            outcome.append(predictor.predict(read_volume(big_case), on_event=on_event, cancel=token))
        except Cancelled as error:
            outcome.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    assert first_tile.wait(120)
    token.cancel()
    worker.join(60)
    assert not worker.is_alive()
    assert isinstance(outcome[0], Cancelled)


def test_reordering_mid_run_gives_the_same_labels(ct_model: Path, big_case: Path) -> None:
    volume = read_volume(big_case)
    preset = get_preset("fast").with_overrides(tile_step=0.5)
    baseline_order: list[int] = []
    starts: dict[int, int] = {}

    def on_baseline_event(event: TileEvent) -> None:
        baseline_order.append(event.tile_index)
        starts[event.tile_index] = event.network_box[0].start

    baseline = Predictor(ct_model, preset, device="cpu").predict(volume, on_event=on_baseline_event)

    predictor = Predictor(ct_model, preset, device="cpu")
    order: list[int] = []
    focus = FocusToken()

    def on_event(event: TileEvent) -> None:
        order.append(event.tile_index)
        if event.done == 1:  # the viewer scrolled to the top slice: those tiles first
            focus.prioritise(lambda tile: -tile.box[0].start)

    reordered = predictor.predict(volume, on_event=on_event, focus=focus)
    assert order[:1] == baseline_order[:1] and order != baseline_order, "the order changed after the first tile"
    tops = [starts[index] for index in order[1:]]
    assert tops == sorted(tops, reverse=True), "after the first tile, the top slices' tiles first"
    assert len(set(order)) == len(order) == baseline.tiles
    # Only the order of the float32 additions changed: the labels are identical (DESIGN.md, "Sliding window")
    assert np.array_equal(reordered.labels, baseline.labels)


def test_focus_on_slice_puts_tiles_on_screen_first(ct_model: Path, big_case: Path) -> None:
    predictor = Predictor(ct_model, get_preset("fast").with_overrides(tile_step=0.5), device="cpu")
    volume = read_volume(big_case)
    events: list[TileEvent] = []
    slice_index = 3

    def on_event(event: TileEvent) -> None:
        events.append(event)

    focus = FocusToken()
    focus.focus_on_slice(input_axis=0, index=slice_index)
    predictor.predict(volume, on_event=on_event, focus=focus)
    shows_slice = [e.input_box is not None and e.input_box[0].start <= slice_index < e.input_box[0].stop for e in events]
    first_other = shows_slice.index(False)
    assert any(shows_slice) and not any(shows_slice[first_other:])


def test_batched_tiles_give_the_same_labels(ct_model: Path, big_case: Path) -> None:
    volume = read_volume(big_case)
    preset = get_preset("fast").with_overrides(precision="fp32")
    one = Predictor(ct_model, preset.with_overrides(batch_size=1), device="cpu").predict(volume)
    events: list[TileEvent] = []
    three = Predictor(ct_model, preset.with_overrides(batch_size=3), device="cpu").predict(volume, on_event=events.append)
    assert (one.labels == three.labels).mean() >= 0.9999
    assert len(events) == three.tiles


def test_accumulators_fall_back_when_memory_runs_out(ct_model: Path, big_case: Path, monkeypatch) -> None:
    from tilewise.engine.backends.torch_backend import TorchBackend

    calls = {"n": 0}
    original = TorchBackend.__call__

    def flaky_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, inputs)

    monkeypatch.setattr(TorchBackend, "__call__", flaky_forward)
    volume = read_volume(big_case)
    preset = get_preset("fast").with_overrides(tile_step=0.5, batch_size=2, precision="fp32", backend="torch")
    result = Predictor(ct_model, preset, device="cpu").predict(volume)
    monkeypatch.setattr(TorchBackend, "__call__", original)
    expected = Predictor(ct_model, preset, device="cpu").predict(volume)
    assert any("batch size reduced to 1" in note for note in result.notes)
    assert (result.labels == expected.labels).all()


def test_focus_moves_while_running(ct_model: Path, big_case: Path) -> None:
    predictor = Predictor(ct_model, get_preset("fast").with_overrides(tile_step=0.5), device="cpu")
    volume = read_volume(big_case)
    last = volume.shape[0] - 1
    events: list[TileEvent] = []
    focus = FocusToken()

    def on_event(event: TileEvent) -> None:
        events.append(event)
        if event.done == 1:  # the user scrolled to the last slice
            focus.focus_on_slice(0, last)

    predictor.predict(volume, on_event=on_event, focus=focus)
    shows_last = [e.input_box is not None and e.input_box[0].stop - 1 >= last for e in events[1:]]
    assert any(shows_last)
    assert not any(shows_last[shows_last.index(False):])


def test_out_of_memory_in_export_fails_clearly_without_rerunning_the_tiles(ct_model: Path, ct_case: Path,
                                                                          monkeypatch) -> None:
    from tilewise.engine.postprocess import export as export_module
    from tilewise.engine.errors import OutOfMemoryError

    volume = read_volume(ct_case)
    predictor = Predictor(ct_model, get_preset("preview").with_overrides(batch_size=1), device="cpu",
                          streaming=False)  # the whole-volume export, after every tile (a streaming run's is beside)
    tiles_of_a_full_run = predictor.predict(volume).tiles
    batches: list[int] = []
    real_backend = predictor.backend

    class CountingBackend:
        def __getattr__(self, name):
            return getattr(real_backend, name)

        def __call__(self, inputs):
            batches.append(int(inputs.shape[0]))
            return real_backend(inputs)

    def export_out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 33030144000 bytes")

    predictor.backend = CountingBackend()
    monkeypatch.setattr(export_module, "export_logits", export_out_of_memory)
    with pytest.raises(OutOfMemoryError) as raised:
        predictor.predict(volume)
    assert raised.value.exit_code == 3 and "writing labels on the input grid" in str(raised.value)
    assert sum(batches) == tiles_of_a_full_run, "every tile ran exactly once: the sliding window was not rerun"

"""Memory is part of correctness: slab-wise export, every accumulator placement, the plan before the work, and
out-of-memory wherever it happens."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import model_factory
from tilewise.engine import Predictor, get_preset, read_volume
from tilewise.engine.commands.cli import main
from tilewise.engine.errors import DiskSpaceError, OutOfMemoryError
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.postprocess import export as export_module
from tilewise.engine.postprocess.export import crop_resampler, export_logits
from tilewise.engine.postprocess.resample import LogitResampler
from tilewise.engine.preprocess.grid_mapping import GridMapper
from tilewise.engine.runtime.memory import host_available_bytes, is_out_of_memory
from tilewise.engine.runtime.memory_plan import JobSize, plan_memory
from tilewise.engine.sliding.accumulators import Accumulator, Placement, nnunet_gaussian
from tilewise.engine.sliding.runner import SlidingWindowRunner

CPU = torch.device("cpu")


# ---- export, slab by slab ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_shape", "out_shape", "spacing", "new_spacing", "order_z"), [
    pytest.param((20, 24, 28), (31, 17, 40), (1.0, 1.0, 1.0), (0.7, 1.5, 0.8), 0, id="joint-linear"),
    pytest.param((8, 30, 30), (29, 41, 37), (4.0, 1.0, 1.0), (1.1, 0.8, 0.8), 0, id="separate-z-nearest"),
    pytest.param((8, 30, 30), (29, 41, 37), (4.0, 1.0, 1.0), (1.1, 0.8, 0.8), 1, id="separate-z-linear"),
    pytest.param((30, 20, 9), (11, 31, 30), (1.0, 1.0, 4.0), (2.7, 0.6, 1.2), 0, id="coarse-last-axis"),
])
@pytest.mark.parametrize("rows_per_slab", [1, 3, 7, 1000])
def test_every_slab_cut_gives_the_same_values(in_shape, out_shape, spacing, new_spacing, order_z,
                                              rows_per_slab) -> None:
    logits = torch.from_numpy(np.random.default_rng(1).normal(size=(4, *in_shape)).astype(np.float32))
    resampler = LogitResampler(in_shape, out_shape, spacing, new_spacing, order=1, order_z=order_z)
    whole = resampler.slab(logits, 0, out_shape[0], 0).clone()  # a slab is valid until the next one is made
    pieces = []
    for start, stop in resampler.slabs(rows_per_slab):
        low, high = resampler.input_rows(start, stop)
        assert 0 <= low < high <= in_shape[0]
        pieces.append(resampler.slab(logits[:, low:high].clone(), start, stop, low).clone())
    assert torch.equal(torch.cat(pieces, dim=1), whole)
    assert whole.shape == (4, *out_shape)


@pytest.mark.parametrize("kind", ["3d", "aniso", "regions", "transposed"])
def test_slab_export_equals_the_unsliced_export(make_model, tmp_path: Path, kind: str) -> None:
    bundle = ModelBundle.load(make_model(kind))
    predictor = Predictor(bundle.path, get_preset("preview"), device="cpu")
    volume = read_volume(model_factory.case_files(tmp_path, "case", kind))
    from tilewise.engine.preprocess.pipeline import preprocess

    prepared = preprocess(volume, bundle, with_nonzero_mask=False)
    heads = bundle.label_manager.num_segmentation_heads
    logits = torch.from_numpy(np.random.default_rng(2).normal(size=(heads, *prepared.data.shape[1:]))
                              .astype(np.float32))[(slice(None), *prepared.unpadded)]
    resampler = crop_resampler(bundle, prepared.properties, tuple(logits.shape[1:]))
    assert resampler is not None
    one_slab = export_logits(logits, bundle, prepared.properties, slab_budget_bytes=2**40)
    tiny_slabs = export_logits(logits, bundle, prepared.properties, slab_budget_bytes=1)
    assert one_slab.labels.shape == volume.shape
    assert np.array_equal(one_slab.labels, tiny_slabs.labels)
    assert len(np.unique(one_slab.labels)) > 1
    del predictor


def test_probabilities_stream_into_a_file_and_match_nnunet(ct_model: Path, ct_case: Path) -> None:
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from tilewise.engine.preprocess.pipeline import preprocess

    bundle = ModelBundle.load(ct_model)
    prepared = preprocess(read_volume(ct_case), bundle, with_nonzero_mask=False)
    heads = bundle.label_manager.num_segmentation_heads
    logits = torch.from_numpy(np.random.default_rng(3).normal(size=(heads, *prepared.data.shape[1:]))
                              .astype(np.float32) * 4)[(slice(None), *prepared.unpadded)]

    ours = export_logits(logits, bundle, prepared.properties, with_probabilities=True, slab_budget_bytes=1)
    labels, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), bundle.plans_manager, bundle.configuration_manager, bundle.label_manager,
        prepared.properties, return_probabilities=True)

    assert isinstance(ours.probabilities.base, np.memmap) or isinstance(ours.probabilities, np.memmap)
    np.testing.assert_allclose(ours.probabilities, probabilities, atol=2e-5)
    assert (ours.labels == labels).mean() > 0.999


def test_probabilities_that_cannot_fit_the_disk_are_refused(ct_model: Path, ct_case: Path, monkeypatch) -> None:
    class Usage:
        free = 1000

    monkeypatch.setattr(export_module.shutil, "disk_usage", lambda folder: Usage())
    predictor = Predictor(ct_model, get_preset("preview"), device="cpu")
    with pytest.raises(DiskSpaceError, match="temporary disk space") as raised:
        predictor.predict(read_volume(ct_case), with_probabilities=True)
    assert raised.value.exit_code == 3


# ---- accumulators: every placement weights like nnU-Net ----------------------------------------------------------


def test_gaussian_is_nnunets_float16_map_with_zeros_clamped() -> None:
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    stock = compute_gaussian((24, 28, 32), sigma_scale=1 / 8, value_scaling_factor=10, device=CPU)
    assert stock.dtype == torch.float16
    for dtype in (torch.float16, torch.float32):
        ours = nnunet_gaussian((24, 28, 32), dtype, CPU)
        assert ours.dtype == dtype and bool((ours > 0).all())
        assert torch.equal(ours.to(torch.float16), stock)
        assert torch.equal(ours.float(), stock.float()), "float32 sums hold nnU-Net's float16-rounded weights"


class _FixedBackend:
    """A deterministic stand-in network: logits are a smooth function of the input and position."""

    name, precision, device, variable_batch = "fixed", "fp32", CPU, True
    passes_per_tile = 1
    convert_seconds, cache_events, notes = 0.0, [], []

    def __init__(self, heads: int = 3, fail_above: int | None = None) -> None:
        self.heads, self.fail_above, self.batches = heads, fail_above, []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self.batches.append(inputs.shape[0])
        if self.fail_above is not None and inputs.shape[0] > self.fail_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        scale = torch.arange(1, self.heads + 1, dtype=torch.float32).reshape(1, -1, 1, 1, 1)
        return torch.sin(inputs[:, :1] * scale + scale)

    def describe(self) -> str:
        return "fixed"


def _grid(shape: tuple[int, int, int]) -> GridMapper:
    return GridMapper(transpose_forward=(0, 1, 2), crop_start=(0, 0, 0), crop_shape=shape, network_shape=shape,
                      pad_before=(0, 0, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_placement_gives_finite_nnunet_weighted_logits(dtype: torch.dtype) -> None:
    from tilewise.engine.sliding.plan import plan_tiles

    shape, patch = (20, 26, 30), (12, 16, 16)
    data = torch.from_numpy(np.random.default_rng(4).normal(size=(1, *shape)).astype(np.float32))
    runner = SlidingWindowRunner(_FixedBackend(), patch, 0.5, 2, 3, lambda x: x.argmax(0),
                                 placement_order=[Placement(CPU, dtype)])
    logits = runner.run(data, _grid(shape)).logits

    gaussian = nnunet_gaussian(patch, torch.float32, CPU).double()  # nnU-Net's weights, summed in float64 here
    sums, weights = torch.zeros((3, *shape), dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    for tile in plan_tiles(shape, patch, 0.5):
        sums[(slice(None), *tile.box)] += _FixedBackend()(data[(slice(None), *tile.box)][None])[0].double() * gaussian
        weights[tile.box] += gaussian
    expected = sums / weights
    assert logits.dtype == dtype and bool(torch.isfinite(logits).all()), "no 0/0 at tile corners"
    if dtype == torch.float32:
        assert float((logits.double() - expected).abs().max()) <= 1e-5
    else:  # nnU-Net's own float16 sums: precise where tiles carry weight, rounded to nothing at lone tile corners
        weighty = weights >= 1e-2
        assert float((logits.double() - expected).abs()[:, weighty].max()) <= 2e-2
        assert float(weighty.double().mean()) > 0.5


def test_float16_sums_equal_nnunets_own_float16_accumulation() -> None:
    """nnU-Net: prediction * gaussian in float32, added into float16 sums, weights summed in float16, divided."""
    patch = (8, 8, 8)
    gaussian16 = nnunet_gaussian(patch, torch.float16, CPU)
    accumulator = Accumulator(2, (12, 8, 8), patch, Placement(CPU, torch.float16))
    logits16 = torch.zeros((2, 12, 8, 8), dtype=torch.half)
    weights16 = torch.zeros((12, 8, 8), dtype=torch.half)
    generator = torch.Generator().manual_seed(0)
    for start in (0, 4):
        prediction = torch.randn((2, *patch), generator=generator) * 5
        region = (slice(start, start + 8), slice(0, 8), slice(0, 8))
        accumulator.add(region, prediction.clone())  # add weights the tile's logits in place, as nnU-Net does
        prediction = prediction * gaussian16
        logits16[(slice(None), *region)] += prediction
        weights16[region] += gaussian16
    torch.div(logits16, weights16, out=logits16)
    assert torch.equal(accumulator.finalise(), logits16)


def test_allocation_out_of_memory_moves_the_sums_to_the_next_placement(monkeypatch) -> None:
    from tilewise.engine.sliding import runner as runner_module

    real = runner_module.Accumulator
    tried: list[torch.dtype] = []

    def allocate(heads, spatial, patch, placement):
        tried.append(placement.dtype)
        if placement.dtype == torch.float32:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 123456789 bytes")
        return real(heads, spatial, patch, placement)

    monkeypatch.setattr(runner_module, "Accumulator", allocate)
    shape = (16, 16, 16)
    runner = SlidingWindowRunner(_FixedBackend(), (8, 8, 8), 0.5, 1, 3, lambda x: x.argmax(0))
    run = runner.run(torch.ones((1, *shape)), _grid(shape))
    assert tried == [torch.float32, torch.float16]
    assert run.logits.dtype == torch.float16 and any("float16" in note for note in run.notes)


def test_forward_out_of_memory_halves_the_batch_and_no_tile_runs_twice() -> None:
    shape, patch = (16, 24, 24), (8, 8, 8)
    backend = _FixedBackend(fail_above=1)
    runner = SlidingWindowRunner(backend, patch, 0.5, 4, 3, lambda x: x.argmax(0))
    run = runner.run(torch.ones((1, *shape)), _grid(shape))
    reference = SlidingWindowRunner(_FixedBackend(), patch, 0.5, 1, 3, lambda x: x.argmax(0))
    assert torch.equal(run.logits, reference.run(torch.ones((1, *shape)), _grid(shape)).logits)
    assert run.batch_size == 1 and any("batch size reduced to 1" in n for n in run.notes)
    successful = [b for b in backend.batches if b <= 1]
    assert sum(successful) == run.tiles_run


def test_a_backend_with_a_static_batch_gets_exit_3_instead_of_a_useless_halving() -> None:
    backend = _FixedBackend(fail_above=0)
    backend.variable_batch = False
    runner = SlidingWindowRunner(backend, (8, 8, 8), 0.5, 2, 3, lambda x: x.argmax(0))
    with pytest.raises(OutOfMemoryError, match="running the network"):
        runner.run(torch.ones((1, 16, 16, 16)), _grid((16, 16, 16)))
    assert backend.batches == [2]


def test_predictor_remembers_the_batch_that_fitted(ct_model: Path, ct_case: Path) -> None:
    predictor = Predictor(ct_model, get_preset("preview").with_overrides(batch_size=4, backend="torch"), device="cpu")
    real_backend = predictor.backend

    class FitsTwoTiles:
        def __getattr__(self, name):
            return getattr(real_backend, name)

        def __call__(self, inputs):
            if inputs.shape[0] > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_backend(inputs)

    predictor.backend = FitsTwoTiles()
    result = predictor.predict(read_volume(ct_case))
    assert result.tiles > 2
    assert predictor.settings.batch_size == 2
    assert any("batch size reduced to 2" in note for note in result.notes)


# ---- out-of-memory, one classifier ------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 33030144000 bytes."),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"),
    MemoryError(),
    RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:223: std::bad_alloc"),
    RuntimeError("Failed to allocate 1073741824 bytes of memory"),
])
def test_out_of_memory_is_recognised_from_every_library(error: BaseException) -> None:
    assert is_out_of_memory(error)


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch"), ValueError("out of memory"), KeyError("x")])
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    assert not is_out_of_memory(error)


# ---- the plan before the work -----------------------------------------------------------------------------------

_FP = [(CPU, torch.float32), (CPU, torch.float16)]
_CUDA = torch.device("cuda")
_ON_GPU = [(_CUDA, torch.float32), (_CUDA, torch.float16), (CPU, torch.float32), (CPU, torch.float16)]


def _job(network_voxels: int, heads: int = 105) -> JobSize:
    return JobSize(input_voxels=512 * 512 * 300, channels=1, network_voxels=network_voxels, heads=heads,
                   label_bytes=1, activation_bytes=400 * 2**20)


def test_plan_picks_float32_sums_when_they_fit_and_float16_when_only_those_do() -> None:
    job = _job(150 * 133 * 133)
    assert plan_memory(job, CPU, _FP, 24 * 10**9, 0).placement_index == 0
    # float32 sums (1.1 GB) + activations (0.4 GB) do not fit in 85 % of 1.5 GB; float16 sums (0.56 GB) do
    tight = plan_memory(job, CPU, _FP, int(1.5e9), 0)
    assert tight.placement_index == 1 and tight.notes
    assert tight.peak_host_bytes <= 0.85 * 1.5e9


def test_plan_on_a_gpu_moves_the_sums_to_the_host_when_the_device_is_small() -> None:
    job = _job(150 * 133 * 133)
    plan = plan_memory(job, _CUDA, _ON_GPU, 64 * 10**9, 1 * 10**9)
    assert _ON_GPU[plan.placement_index] == (CPU, torch.float32)


def test_a_hopeless_job_is_refused_with_what_it_needs_and_what_there_is() -> None:
    job = _job(900 * 800 * 800)
    with pytest.raises(OutOfMemoryError) as raised:
        plan_memory(job, CPU, _FP, 24 * 10**9, 0)
    message = str(raised.value)
    assert raised.value.exit_code == 3 and "\n" not in message
    assert "needs about" in message and "24.0 GB are available" in message and "3d_lowres" in message


def test_cli_refuses_a_job_that_cannot_fit_before_any_work(tmp_path: Path, ct_model: Path, ct_case: Path,
                                                          capfd) -> None:
    model = Path(shutil.copytree(ct_model, tmp_path / "fine_model"))
    plans = json.loads((model / "plans.json").read_text())
    for configuration in plans["configurations"].values():
        if "spacing" in configuration:
            configuration["spacing"] = [s / 40 for s in configuration["spacing"]]
    (model / "plans.json").write_text(json.dumps(plans))
    out = tmp_path / "out"
    capfd.readouterr()
    code = main(["predict", "-i", str(ct_case), "-o", str(out), "-m", str(model), "--preset", "preview",
                 "-device", "cpu"])
    err = capfd.readouterr().err
    assert code == 3, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("tilewise: warning:")]
    assert len(lines) == 1 and "needs about" in lines[0] and "GB are available" in lines[0]
    assert "tilewise: warning:" in err, "a 40 times finer spacing than the model's is worth a warning first"
    assert not out.exists() or not any(out.iterdir())


def test_host_memory_probe_reads_the_operating_system() -> None:
    available = host_available_bytes()
    assert 10**8 < available < 2**50

"""Forward backends: OpenVINO parity with nnU-Net, precisions, batches, the model cache, 'auto' and --backend."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import model_factory
from tilewise.engine import Predictor, TilewiseError, get_preset, read_volume
from tilewise.engine.backends import select
from tilewise.engine.backends.select import OPENVINO_INSTALL, BackendChoice, choose_backend
from tilewise.engine.backends.torch_backend import TorchBackend
from tilewise.engine.commands.metrics import dice_per_label
from tilewise.engine.commands.cli import main
from tilewise.engine.model.bundle import ModelBundle

needs_openvino = pytest.mark.skipif(not select.openvino_available(), reason="the openvino extra is not installed")
PATCH = (8, 12, 10)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Tilewise cache folder for the session's Predictor-level tests (each model converts once)."""
    return tmp_path_factory.mktemp("tilewise-cache")


@pytest.fixture
def cache_env(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(shared_cache))
    return shared_cache / "openvino"


def tiny_networks(count: int, seed: int = 0) -> list[nn.Module]:
    """Small, asymmetric 3D conv nets (so that mirroring and fold averaging matter)."""
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(),
                          nn.Conv3d(4, 3, (3, 1, 2), padding="same")).eval() for _ in range(count)]


def ov_backend(networks: list[nn.Module], cache_root: Path, batch: int = 2, precision: str = "fp32",
               mirror_axes: tuple[int, ...] = ()):
    from tilewise.engine.backends.openvino_backend import OpenVINOBackend
    from tilewise.engine.backends.ov_cache import ModelCache

    return OpenVINOBackend(networks, mirror_axes, (batch, 1, *PATCH), precision, "CPU", ModelCache(cache_root))


def inputs(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn((batch, 1, *PATCH), generator=torch.Generator().manual_seed(seed))


def compiled_precision(predictor: Predictor) -> str:
    """The precision OpenVINO compiled the first fold for ('f32', 'bf16', ...)."""
    return predictor.backend.folds[0].compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def assert_dice(ours: np.ndarray, theirs: np.ndarray, minimum: float) -> None:
    scores = dice_per_label(ours, theirs)
    assert scores, "the reference prediction must contain foreground for the test to mean anything"
    assert min(scores.values()) >= minimum, scores


# ---- parity with nnU-Net and with the torch backend ----------------------------------------------------------


@needs_openvino
@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_openvino_fp32_matches_nnunet(make_model, tmp_path: Path, cache_env: Path, kind: str) -> None:
    model_dir = make_model(kind)
    files = model_factory.case_files(tmp_path, "case", kind)
    predictor = Predictor(model_dir, get_preset("reference").with_overrides(backend="openvino"), device="cpu")
    assert predictor.backend.describe() == "openvino CPU fp32" and predictor.settings.backend == "openvino"
    assert compiled_precision(predictor) == "f32", "fp32 must not silently run in bf16 on CPUs that have it"

    result = predictor.predict(read_volume(files))
    reference = model_factory.nnunet_reference(model_dir, files, folds=(0,), step=0.5, mirroring=True)
    assert (result.labels == reference).mean() >= 0.999
    assert_dice(result.labels, reference, 0.999)


@needs_openvino
def test_openvino_averages_folds_and_mirrors_like_torch(tmp_path: Path) -> None:
    networks = tiny_networks(2)
    axes = (0, 1, 2)
    ours = ov_backend(networks, tmp_path, batch=2, mirror_axes=axes)
    theirs = TorchBackend(networks, axes, torch.device("cpu"), "fp32")
    assert ours.passes_per_tile == theirs.passes_per_tile == 16
    batch = inputs(2)
    with torch.inference_mode():
        expected = theirs(batch)
    got = ours(batch)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@needs_openvino
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_batches_other_than_the_compiled_size(tmp_path: Path, batch: int) -> None:
    networks = tiny_networks(1)
    backend = ov_backend(networks, tmp_path, batch=2)  # a short final batch is padded, a long one split
    data = inputs(batch)
    with torch.no_grad():
        expected = networks[0](data)
    torch.testing.assert_close(backend(data), expected, atol=1e-5, rtol=1e-4)


@needs_openvino
def test_bf16_runs_and_agrees(ct_model: Path, ct_case: Path, cache_env: Path) -> None:
    import openvino

    supported = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    volume = read_volume(ct_case)
    preset = get_preset("balanced").with_overrides(backend="openvino")
    reduced = Predictor(ct_model, preset.with_overrides(precision="bf16"), device="cpu")
    assert reduced.settings.precision == ("bf16" if supported else "fp32")
    assert any("computes in fp32" in note for note in reduced.backend.notes) == (not supported)
    assert compiled_precision(reduced) == ("bf16" if supported else "f32")
    full = Predictor(ct_model, preset.with_overrides(precision="fp32"), device="cpu")
    assert_dice(reduced.predict(volume).labels, full.predict(volume).labels, 0.95)


@pytest.mark.parametrize(("requested", "capabilities", "device", "expected", "noted"), [
    ("fp32", ["FP32", "BF16"], "CPU", "fp32", False),
    ("reduced", ["FP32", "BF16"], "CPU", "bf16", False),
    ("reduced", ["FP32", "FP16"], "CPU", "fp16", False),
    ("reduced", ["FP32"], "CPU", "fp32", False),
    ("fp16", ["FP32", "BF16"], "CPU", "bf16", True),
    ("fp16", ["FP32"], "CPU", "fp32", True),
    ("bf16", ["FP32"], "CPU", "fp32", True),
    ("bf16", ["FP32", "FP16", "BF16"], "GPU", "fp16", True),
    ("reduced", ["FP32", "FP16"], "GPU", "fp16", False),
])
def test_openvino_precision_mapping(requested: str, capabilities: list[str], device: str, expected: str,
                                    noted: bool) -> None:
    from tilewise.engine.backends.openvino_backend import resolve_openvino_precision

    precision, note = resolve_openvino_precision(requested, capabilities, device)
    assert precision == expected and (note is not None) == noted
    if note:
        assert requested in note and expected in note


def normed_networks(count: int, seed: int = 0) -> list[nn.Module]:
    """Like :func:`tiny_networks`, with an instance norm as nnU-Net uses it (affine, no running statistics)."""
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(),
                          nn.Conv3d(4, 3, 1)).eval() for _ in range(count)]


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_pooled_instance_norm_equals_torch(dims: int) -> None:
    from tilewise.engine.backends.ov_convert import PooledInstanceNorm

    norm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](3, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn((2, 3, *[9, 7, 5][:dims])) * 3 + 5
    with torch.no_grad():
        torch.testing.assert_close(PooledInstanceNorm(norm)(x), norm(x), atol=1e-5, rtol=1e-5)


def test_pooled_norms_replace_every_reference_once() -> None:
    from tilewise.engine.backends.ov_convert import PooledInstanceNorm, with_pooled_norms

    network = normed_networks(1)[0]
    alias = nn.ModuleDict({"net": network, "again": network[1]})  # nnU-Net refers to its norms twice
    pooled = with_pooled_norms(alias)
    assert isinstance(pooled["net"][1], PooledInstanceNorm) and pooled["again"] is pooled["net"][1]
    assert isinstance(network[1], nn.InstanceNorm3d), "the torch network itself is left alone"
    assert with_pooled_norms(tiny_networks(1)[0]) is None


@needs_openvino
def test_openvino_normalises_mostly_constant_tiles_like_torch(tmp_path: Path) -> None:
    """A tile that is mostly constant (air) is normalised within float32 rounding of torch."""
    networks = normed_networks(1)
    tile = torch.full((1, 1, *PATCH), -3.0)
    tile[:, :, 2:5, 3:8, 2:7] = torch.randn((1, 1, 3, 5, 5))
    backend = ov_backend(networks, tmp_path, batch=1)
    assert not backend.notes[1:], backend.notes
    with torch.no_grad():
        expected = networks[0].double()(tile.double()).float()
    torch.testing.assert_close(backend(tile), expected, atol=1e-4, rtol=1e-4)


@needs_openvino
def test_a_conversion_that_disagrees_with_torch_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewise.engine.backends import openvino_backend

    checks: list[str] = []

    def first_fails(converted: torch.Tensor, reference: torch.Tensor, precision: str) -> str | None:
        checks.append(precision)
        return "made up" if len(checks) == 1 else None

    monkeypatch.setattr(openvino_backend, "agreement_error", first_fails)
    backend = ov_backend(normed_networks(1), tmp_path)
    assert len(checks) == 2 and backend.conversions == 2
    assert "pooled instance norms: made up; the stock conversion is used" in backend.notes[0]

    monkeypatch.setattr(openvino_backend, "agreement_error", lambda *args: "made up")
    with pytest.raises(TilewiseError, match="disagrees with torch"):
        ov_backend(normed_networks(1, seed=1), tmp_path)
    assert len(list(tmp_path.glob("*/manifest.json"))) == 1, "a model that failed its check is not kept"


# ---- the converted-model cache -------------------------------------------------------------------------------


@needs_openvino
def test_second_backend_loads_from_the_cache(tmp_path: Path) -> None:
    networks = tiny_networks(2)
    first = ov_backend(networks, tmp_path)
    assert first.conversions == 2 and first.cache_events == ["converted", "converted"]
    assert all("cached for later runs" in note for note in first.notes)
    manifests = sorted(tmp_path.glob("*/manifest.json"))
    assert len(manifests) == 2
    written = [m.stat().st_mtime_ns for m in manifests]

    second = ov_backend(networks, tmp_path)
    assert second.conversions == 0 and second.cache_events == ["cached", "cached"] and not second.notes
    assert [m.stat().st_mtime_ns for m in manifests] == written
    torch.testing.assert_close(second(inputs(2)), first(inputs(2)), atol=0, rtol=0)


@needs_openvino
def test_each_precision_and_batch_size_has_its_own_entry(tmp_path: Path) -> None:
    networks = tiny_networks(1)
    precisions = {ov_backend(networks, tmp_path, batch=batch, precision=precision).precision
                  for batch, precision in ((1, "fp32"), (2, "fp32"), (1, "reduced"))}
    assert len(list(tmp_path.glob("*/manifest.json"))) == 1 + len(precisions)  # reduced may resolve to fp32


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _stale_key(path: Path) -> None:
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["key"]["openvino"] = "0.0"
    manifest_path.write_text(json.dumps(manifest))


DAMAGE = {
    "corrupt-bin": ("model.bin", _flip_bytes),
    "truncated-xml": ("model.xml", _truncate),
    "missing-bin": ("model.bin", Path.unlink),
    "garbage-manifest": ("manifest.json", lambda p: p.write_text("{not json")),
    "stale-key": ("model.xml", _stale_key),
}


@pytest.fixture(scope="module")
def cached_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A cache holding the converted ``tiny_networks(1)`` (batch 2, fp32), and that backend's logits for
    ``inputs(2)``; tests copy it instead of converting again."""
    root = tmp_path_factory.mktemp("tiny-cache")
    return root, ov_backend(tiny_networks(1), root)(inputs(2))


@needs_openvino
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_entries_are_rebuilt(cached_tiny: tuple[Path, torch.Tensor], tmp_path: Path,
                                           damage: str) -> None:
    template, expected = cached_tiny
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    networks = tiny_networks(1)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    name, spoil = DAMAGE[damage]
    spoil(entry / name)

    rebuilt = ov_backend(networks, tmp_path)
    assert rebuilt.conversions == 1 and rebuilt.cache_events[0].startswith("rebuilt")
    assert "rebuilt" in rebuilt.notes[0]
    torch.testing.assert_close(rebuilt(inputs(2)), expected, atol=0, rtol=0)
    again = ov_backend(networks, tmp_path)
    assert again.conversions == 0 and again.cache_events == ["cached"]


@needs_openvino
def test_changed_weights_are_a_different_model(cached_tiny: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    shutil.copytree(cached_tiny[0], tmp_path, dirs_exist_ok=True)
    networks = tiny_networks(1)
    with torch.no_grad():
        networks[0][0].bias += 1.0
    changed = ov_backend(networks, tmp_path)
    assert changed.conversions == 1 and changed.cache_events == ["converted"]
    with torch.no_grad():
        torch.testing.assert_close(changed(inputs(2)), networks[0](inputs(2)), atol=1e-5, rtol=1e-4)


@needs_openvino
def test_unwritable_cache_still_runs(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    networks = tiny_networks(1)
    backend = ov_backend(networks, blocked / "openvino")
    assert backend.conversions == 1 and "could not cache" in backend.notes[0]
    with torch.no_grad():
        torch.testing.assert_close(backend(inputs(2)), networks[0](inputs(2)), atol=1e-5, rtol=1e-4)


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tilewise.engine.backends.ov_cache import openvino_cache_dir

    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path))
    assert openvino_cache_dir() == tmp_path / "openvino"
    monkeypatch.delenv("TILEWISE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("sys.platform", "linux")
    assert openvino_cache_dir() == tmp_path / "xdg" / "tilewise" / "openvino"
    monkeypatch.setattr("sys.platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert openvino_cache_dir() == tmp_path / "local" / "Tilewise" / "cache" / "openvino"


# ---- choosing the backend ------------------------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return monkeypatch


@pytest.mark.parametrize("openvino", [True, False])
def test_auto_prefers_cuda_then_openvino_then_torch_cpu(no_gpu: pytest.MonkeyPatch, openvino: bool) -> None:
    no_gpu.setattr(select, "openvino_available", lambda: openvino)
    cpu = torch.device("cpu")
    expected = BackendChoice("openvino", cpu, "CPU") if openvino else BackendChoice("torch", cpu)
    assert choose_backend("auto", "auto") == expected
    assert choose_backend("auto", "cpu") == expected
    assert choose_backend("torch", "auto") == BackendChoice("torch", torch.device("cpu"))
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_backend("auto", "auto") == BackendChoice("torch", torch.device("cuda"))
    no_gpu.setattr(torch.cuda, "is_available", lambda: False)
    no_gpu.setattr(torch.backends.mps, "is_available", lambda: True)
    assert choose_backend("auto", "auto") == BackendChoice("torch", torch.device("mps"))


def test_openvino_without_the_package_names_the_fix(no_gpu: pytest.MonkeyPatch) -> None:
    no_gpu.setattr(select, "openvino_available", lambda: False)
    with pytest.raises(TilewiseError, match=r'pip install "tilewise\[openvino\]"'):
        choose_backend("openvino", "cpu")
    assert OPENVINO_INSTALL in str(pytest.raises(TilewiseError, choose_backend, "auto", "gpu").value)


def test_openvino_refuses_cuda(no_gpu: pytest.MonkeyPatch) -> None:
    no_gpu.setattr(select, "openvino_available", lambda: True)
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(TilewiseError, match="not on cuda"):
        choose_backend("openvino", "cuda")
    assert choose_backend("openvino", "auto") == BackendChoice("openvino", torch.device("cpu"), "CPU")
    with pytest.raises(TilewiseError, match="only the openvino backend"):
        choose_backend("torch", "gpu")


@needs_openvino
def test_missing_intel_gpu_is_an_error(no_gpu: pytest.MonkeyPatch) -> None:
    import openvino

    if any(d.startswith("GPU") for d in openvino.Core().available_devices):
        pytest.skip("this machine has an Intel GPU")
    with pytest.raises(TilewiseError, match="no Intel GPU"):
        choose_backend("auto", "gpu")


# ---- the command line ----------------------------------------------------------------------------------------


def _predict(model: Path, case: Path, out: Path, backend: str) -> list[str]:
    return ["predict", "-i", str(case), "-o", str(out), "-m", str(model), "--preset", "preview", "-device", "cpu",
            "--precision", "fp32", "--backend", backend, "--report", str(out / "report.json")]


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=needs_openvino)])
def test_predict_backend_flag(ct_model: Path, ct_case: Path, tmp_path: Path, cache_env: Path,
                              capsys: pytest.CaptureFixture, backend: str) -> None:
    out = tmp_path / "out"
    assert main(_predict(ct_model, ct_case, out, backend)) == 0
    report = json.loads((out / "report.json").read_text())
    description = f"{backend} {'CPU' if backend == 'openvino' else 'cpu'} fp32"
    assert report["backend"] == backend and report["backend_description"] == description
    assert report["precision"] == "fp32"
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"({description})")


def test_predict_openvino_not_installed(ct_model: Path, ct_case: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "openvino_available", lambda: False)
    assert main(_predict(ct_model, ct_case, tmp_path / "out", "openvino")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tilewise: error: ") and OPENVINO_INSTALL in err[0]


def test_conversions_on_two_threads_at_once(ct_model: Path, tmp_path: Path, monkeypatch) -> None:
    """The viewer times passes on one thread while a run loads the same model on another."""
    import threading

    pytest.importorskip("openvino")
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    errors: list[BaseException] = []

    def load(precision: str) -> None:
        try:
            Predictor(ct_model, get_preset("fast").with_overrides(backend="openvino", precision=precision),
                      device="cpu")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=load, args=(p,)) for p in ("fp32", "bf16", "fp32")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@needs_openvino
def test_timings_say_how_long_converting_took(ct_model: Path, ct_case: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))  # empty: the first load converts
    preset = get_preset("fast").with_overrides(backend="openvino", precision="fp32")
    volume = read_volume(ct_case)

    cold = Predictor(ct_model, preset, device="cpu")
    warm = Predictor(ct_model, preset, device="cpu")  # the same model, from the cache now
    torch_run = Predictor(ct_model, preset.with_overrides(backend="torch"), device="cpu").predict(volume)

    assert cold.backend.cache_events == ["converted"] and warm.backend.cache_events == ["cached"]
    cold_timings, warm_timings = cold.predict(volume).timings, warm.predict(volume).timings
    assert 0 < cold_timings["convert"] <= cold_timings["load"]
    assert warm_timings["convert"] == 0 and torch_run.timings["convert"] == 0


@needs_openvino
def test_a_unet_is_traced_on_a_small_input_and_runs_on_the_whole_tile(ct_model: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """Tracing keeps every activation of its example pass alive (16.9 GB for TotalSegmentator's network on its tile):
    a U-Net is traced on twice its total stride per axis, and the model it gives computes torch's logits on a tile."""
    import openvino

    from tilewise.engine.backends.ov_convert import example_shape

    traced: list[tuple[int, ...]] = []
    shipped = openvino.convert_model

    def recording(network, example_input=None, **kwargs):
        traced.append(tuple(example_input.shape))
        return shipped(network, example_input=example_input, **kwargs)

    monkeypatch.setattr(openvino, "convert_model", recording)
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    predictor = Predictor(ct_model, get_preset("fast").with_overrides(backend="openvino", precision="fp32"),
                          device="cpu")
    assert predictor.networks == [] and predictor.bundle.fold_weights == [], "OpenVINO runs: torch weights let go"
    network = ModelBundle.load(ct_model, folds=predictor.bundle.folds).build_networks()[0]
    tile = (1, 1, *predictor.bundle.patch_size)
    small = example_shape(network, tile)
    strides = np.prod(np.array(network.encoder.strides), axis=0)
    assert small == (1, 1, *(min(2 * int(s), p) for s, p in zip(strides, predictor.bundle.patch_size)))
    assert small != tile and traced == [small], "traced once, on the small input (the first recipe agreed)"
    sample = torch.randn(tile, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = network(sample)
    got = torch.from_numpy(predictor.backend.folds[0](sample.numpy()))
    assert float((got - expected).abs().max()) <= 1e-3 * float(expected.abs().max())


@needs_openvino
def test_released_buffers_come_back_for_the_next_pass(tmp_path: Path) -> None:
    """A TotalSegmentator task frees each model's OpenVINO buffers while the others run; its next pass is unchanged."""
    from tilewise.engine.backends import release_working_memory

    backend = ov_backend(tiny_networks(2), tmp_path)
    before = backend(inputs(2))
    release_working_memory(backend)
    torch.testing.assert_close(backend(inputs(2)), before, atol=0, rtol=0)
    release_working_memory(TorchBackend(tiny_networks(1), (), torch.device("cpu"), "fp32"))  # nothing to free: no error

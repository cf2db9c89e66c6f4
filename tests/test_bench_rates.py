"""How far from the limit: operations per forward pass counted from the layers, and the measured convolution peak
kept as the best rate seen on this machine."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tilewise.engine.backends import peak
from tilewise.engine.backends.flops import forward_flops
from tilewise.engine.model.bundle import ModelBundle
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

DEMO_MODEL = Path(__file__).resolve().parents[1] / "resources" / "demo" / "model"


def _torch_count(network: nn.Module, shape: tuple[int, ...]) -> int:
    """PyTorch's own operation counter (it counts every operator it knows, not layers), on a shape-only copy."""
    shadow = copy.deepcopy(network).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        shadow(torch.empty(shape, device="meta"))
    return counter.get_total_flops()


def test_operations_per_pass_equal_pytorchs_own_count_on_the_demo_network() -> None:
    bundle = ModelBundle.load(DEMO_MODEL, folds=["0"], trust=True)
    network = bundle.build_networks()[0]
    before = {name: value.clone() for name, value in network.state_dict().items()}
    shape = (1, bundle.num_input_channels, *bundle.patch_size)
    assert forward_flops(network, shape) == _torch_count(network, shape) > 1e9
    after = network.state_dict()
    assert all(after[name].device.type == "cpu" and torch.equal(after[name], value) for name, value in before.items())


def test_transposed_and_grouped_convolutions_are_counted_like_pytorch_counts_them() -> None:
    network = nn.Sequential(nn.Conv3d(4, 8, 3, padding=1, groups=2), nn.LeakyReLU(),
                            nn.ConvTranspose3d(8, 6, 2, stride=2), nn.InstanceNorm3d(6), nn.Conv3d(6, 3, 1))
    shape = (2, 4, 6, 5, 7)
    assert forward_flops(network, shape) == _torch_count(network, shape)


def test_the_peak_is_the_best_rate_seen_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "SHAPES", ((16, 24),))  # a small convolution: the test checks the bookkeeping
    key = peak.PeakKey("torch", "cpu", "fp32", torch.get_num_threads())
    measured = peak.peak_flops(key, tmp_path)
    assert measured > 1e8  # any CPU of this decade does 0.1 GFLOP/s in a 3D convolution
    stored = json.loads((tmp_path / peak.CACHE_FILE).read_text())
    assert stored == {key.text(): measured} and key.text().startswith(peak.processor_name())
    stored[key.text()] = 1e15  # a better rate seen before (say, on an idle machine) is kept
    (tmp_path / peak.CACHE_FILE).write_text(json.dumps(stored))
    assert peak.peak_flops(key, tmp_path) == 1e15
    stored[key.text()] = 1.0  # a worse one is replaced by the new measurement
    (tmp_path / peak.CACHE_FILE).write_text(json.dumps(stored))
    assert 1e8 < peak.peak_flops(key, tmp_path) < 1e15
    assert [path.name for path in tmp_path.iterdir()] == [peak.CACHE_FILE], "no staging file is left behind"


def test_openvino_peak_is_measured_with_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    monkeypatch.setattr(peak, "SHAPES", ((16, 24),))
    calls: list[str] = []
    monkeypatch.setattr(peak, "_torch_rate", lambda *args: calls.append("torch") or 0.0)
    assert peak.measure_peak(peak.PeakKey("openvino", "cpu", "fp32", torch.get_num_threads())) > 1e8
    assert calls == [], "an OpenVINO key never measures PyTorch"

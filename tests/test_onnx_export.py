"""``tilewise export-onnx``: ONNX files per fold that onnxruntime runs at any batch size with torch's logits."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tilewise.engine.errors import ModelError, TilewiseError
from tilewise.engine.commands.export_onnx import add_export_onnx_parser, run_export_onnx
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.backends.onnx_export import INPUT_NAME, SIDECAR_NAME, OnnxExport, export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tilewise")
    add_export_onnx_parser(parser.add_subparsers(dest="command"))
    return run_export_onnx(parser.parse_args(["export-onnx", *argv]))


def _assert_matches_torch(onnx_file: Path, network: torch.nn.Module, channels: int, patch: tuple[int, ...]) -> None:
    """onnxruntime and torch agree on random inputs of batch 1 and 2 (the batch axis is dynamic)."""
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 2):
        image = torch.randn((batch, channels, *patch), generator=generator)
        with torch.no_grad():
            expected = network(image).numpy()
        (logits,) = session.run(None, {INPUT_NAME: image.numpy()})
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() <= 1e-3 * max(1.0, float(np.abs(expected).max()))


@pytest.fixture(scope="module")
def ct_export(ct_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelBundle, OnnxExport]:
    """The single-fold 3d test model, exported once for this module."""
    bundle = ModelBundle.load(ct_model)
    return bundle, export_onnx(bundle, tmp_path_factory.mktemp("onnx"))


def test_onnx_logits_match_torch(ct_export: tuple[ModelBundle, OnnxExport]) -> None:
    bundle, result = ct_export
    assert list(result.files) == ["0"]
    assert sorted(p.name for p in result.sidecar.parent.iterdir()) == ["fold_0.onnx", SIDECAR_NAME]
    (network,) = bundle.build_networks()
    _assert_matches_torch(result.files["0"], network, bundle.num_input_channels, bundle.patch_size)


def test_2d_onnx_logits_match_torch(make_model, tmp_path: Path) -> None:
    bundle = ModelBundle.load(make_model("2d"))
    result = export_onnx(bundle, tmp_path)
    (network,) = bundle.build_networks()
    _assert_matches_torch(result.files["0"], network, bundle.num_input_channels, bundle.patch_size)


def test_sidecar_describes_inputs_and_outputs(ct_export: tuple[ModelBundle, OnnxExport]) -> None:
    bundle, result = ct_export
    sidecar = json.loads(result.sidecar.read_text())
    plans = bundle.plans
    assert sidecar["folds"] == {"0": "fold_0.onnx"}
    assert sidecar["patch_size"] == list(bundle.patch_size)
    assert sidecar["spacing"] == plans["configurations"]["3d_fullres"]["spacing"]
    assert sidecar["transpose_forward"] == plans["transpose_forward"]
    assert sidecar["input"] == {"name": "image", "dtype": "float32", "shape": ["batch", 1, *bundle.patch_size]}
    assert sidecar["output"]["shape"] == ["batch", 3, *bundle.patch_size]
    assert sidecar["output"]["nonlinearity"] == "softmax"
    assert sidecar["num_heads"] == 3
    assert sidecar["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert sidecar["regions"] is None
    assert sidecar["mirror_axes"] == list(bundle.mirror_axes)
    assert sidecar["channel_names"] == ["CT"]
    (channel,) = sidecar["normalization"]
    assert channel["scheme"] == "CTNormalization"
    assert channel["foreground_intensity_properties"] == plans["foreground_intensity_properties_per_channel"]["0"]
    assert sidecar["opset"] == 18 and sidecar["tilewise_version"]


def test_sidecar_of_region_model(make_model, tmp_path: Path) -> None:
    sidecar = json.loads(export_onnx(ModelBundle.load(make_model("regions")), tmp_path).sidecar.read_text())
    assert sidecar["output"]["nonlinearity"] == "sigmoid"
    assert sidecar["regions"] == [
        {"head": 0, "name": "whole", "labels": [1, 2, 3], "output_value": 1},
        {"head": 1, "name": "core", "labels": [2, 3], "output_value": 2},
        {"head": 2, "name": "enhancing", "labels": [3], "output_value": 3},
    ]


def test_command_exports_demo_fold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli("-m", "demo", "-o", str(tmp_path), "-f", "0") == 0
    assert "1 fold(s) exported" in capsys.readouterr().err
    sidecar = json.loads((tmp_path / SIDECAR_NAME).read_text())
    assert sidecar["folds"] == {"0": "fold_0.onnx"} and sidecar["labels"]["csf"] == 3
    bundle = ModelBundle.load("demo", folds=["0"])
    (network,) = bundle.build_networks()
    _assert_matches_torch(tmp_path / "fold_0.onnx", network, bundle.num_input_channels, bundle.patch_size)


def test_missing_fold_is_a_one_line_error(ct_model: Path, tmp_path: Path) -> None:
    with pytest.raises(TilewiseError, match=r"fold\(s\) 3 not found; available: 0") as raised:
        _run_cli("-m", str(ct_model), "-o", str(tmp_path / "out"), "-f", "3")
    assert raised.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused(ct_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("")
    with pytest.raises(TilewiseError, match="is a file, not a folder"):
        _run_cli("-m", str(ct_model), "-o", str(target))


def test_failed_export_leaves_nothing_behind(ct_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator\nlong traceback text")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ModelError, match=r"fold_0: ONNX export failed \(unsupported operator\)$"):
        export_onnx(ModelBundle.load(ct_model), tmp_path)
    assert list(tmp_path.iterdir()) == []

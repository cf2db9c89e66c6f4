"""ONNX export: one ONNX file per fold (dynamic batch axis) plus a JSON sidecar describing how to feed it.

Deployers running ONNX Runtime or TensorRT get the raw network of every fold; the sidecar carries what nnU-Net does
around the network (transpose, spacing, normalisation, labels, mirror axes), which the ONNX graph cannot express.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, TilewiseError
from ..data.safe_output import atomic_output
from ..model.bundle import ModelBundle
from ..model.labels import region_heads

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DEFAULT_OPSET = 18
"""The oldest opset torch's exporter writes natively (older ones go through a version converter)."""
SIDECAR_NAME = "tilewise_onnx.json"
SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    files: dict[str, Path]
    """Fold -> ONNX file."""
    sidecar: Path
    seconds: float


def onnx_file_name(fold: str) -> str:
    """File name of one fold's ONNX model, e.g. 'fold_0.onnx'."""
    return f"fold_{fold}.onnx"


def export_onnx(bundle: ModelBundle, output_dir: Path, opset: int = DEFAULT_OPSET) -> OnnxExport:
    """Write every fold of ``bundle`` as ``output_dir/fold_X.onnx`` and the sidecar ``output_dir/tilewise_onnx.json``.

    Each file is checked with ``onnx.checker`` and moved into place only when complete; the sidecar is written last,
    so it exists only when every fold was exported.
    """
    started = time.perf_counter()
    _require_onnx()
    if output_dir.exists() and not output_dir.is_dir():
        raise TilewiseError(output_dir, "output exists and is a file, not a folder")
    shape = (2, bundle.num_input_channels, *bundle.patch_size)  # not 1: a batch of 1 can get specialised
    files: dict[str, Path] = {}
    for fold, network in zip(bundle.folds, bundle.build_networks()):
        path = output_dir / onnx_file_name(fold)
        export_network(network, shape, path, opset, source=bundle.path / f"fold_{fold}")
        files[fold] = path
    sidecar = output_dir / SIDECAR_NAME
    with atomic_output(sidecar) as staging:
        staging.write_text(json.dumps(describe(bundle, {f: p.name for f, p in files.items()}, opset), indent=2))
    return OnnxExport(files=files, sidecar=sidecar, seconds=time.perf_counter() - started)


def export_network(network: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int, source: Path) -> None:
    """Export one network to ``path`` with a dynamic batch axis, check it, and move it into place atomically.

    Weights go into the file itself, or into ``<name>.data`` next to it when they exceed ONNX's 2 GB limit.
    """
    import onnx

    example = torch.zeros(input_shape, dtype=torch.float32)
    with atomic_output(path) as staging:
        try:
            with torch.no_grad():
                program = torch.onnx.export(
                    network.eval(), (example,), dynamo=True, verbose=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
                )
        except Exception as error:  # the exporter raises many unrelated types; report the first line of any
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(source, f"ONNX export failed ({message})") from None
        program.save(staging)
        try:
            onnx.checker.check_model(str(staging), full_check=True)
        except onnx.checker.ValidationError as error:
            reason = str(error).strip().splitlines()[0]
            raise ModelError(source, f"the exported ONNX model is invalid ({reason})") from None
        written = _default_opset(onnx.load(str(staging), load_external_data=False))
        if written != opset:
            raise ModelError(source, f"the network could not be exported at opset {opset} (got {written}); "
                             f"use opset {DEFAULT_OPSET} or newer")


def _default_opset(model: Any) -> int:
    return next(int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _require_onnx() -> None:
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise TilewiseError(None, f"ONNX export needs the '{module}' package; "
                                "install it with: pip install 'tilewise[onnx]'") from None


def describe(bundle: ModelBundle, files: dict[str, str], opset: int) -> dict[str, Any]:
    """The sidecar: how to prepare inputs for, and read outputs of, the exported networks."""
    configuration = bundle.configuration_manager
    plans_manager = bundle.plans_manager
    labels = bundle.label_manager
    intensities = bundle.plans.get("foreground_intensity_properties_per_channel", {})
    patch = list(bundle.patch_size)
    heads = int(labels.num_segmentation_heads)
    return {
        "format": "tilewise-onnx",
        "format_version": SIDECAR_FORMAT,
        "tilewise_version": _tilewise_version(),
        "dataset": bundle.dataset_name,
        "configuration": bundle.configuration_name,
        "trainer": bundle.trainer_name,
        "checkpoint": bundle.checkpoint_name,
        "opset": opset,
        "folds": files,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [BATCH_AXIS, bundle.num_input_channels, *patch]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_AXIS, heads, *patch],
                   "nonlinearity": "sigmoid" if labels.has_regions else "softmax"},
        "patch_size": patch,
        "spacing": [float(s) for s in configuration.spacing],
        "axes": "spatial axes are the network grid: the image array (z, y, x as SimpleITK reads it) permuted by "
                "transpose_forward; transpose_backward restores the image order",
        "transpose_forward": [int(a) for a in plans_manager.transpose_forward],
        "transpose_backward": [int(a) for a in plans_manager.transpose_backward],
        "channel_names": bundle.channel_names,
        "normalization": [
            {"channel": name, "scheme": str(scheme), "use_nonzero_mask": bool(mask),
             "foreground_intensity_properties": intensities.get(str(index), {})}
            for index, (name, scheme, mask) in enumerate(
                zip(bundle.channel_names, configuration.normalization_schemes, configuration.use_mask_for_norm))
        ],
        "num_heads": heads,
        "labels": dict(bundle.dataset_json["labels"]),
        "regions": _regions(bundle),
        "ignore_label": labels.ignore_label,
        "mirror_axes": list(bundle.mirror_axes),
        "sliding_window": {"tile_step": 0.5, "gaussian_sigma_fraction_of_patch": 0.125,
                           "note": "nnU-Net's defaults: tiles overlap by half, predictions weighted by a Gaussian; "
                                   "test-time mirroring averages the logits over flips of mirror_axes "
                                   "(spatial axes, tensor dimension = axis + 2), folds are averaged as logits"},
    }


def _regions(bundle: ModelBundle) -> list[dict[str, Any]] | None:
    """Region-based models: one entry per output head (its labels and the value it paints), else None."""
    heads = region_heads(bundle.dataset_json)
    if not heads:
        return None
    return [
        {"head": head, "name": name, "labels": values, "output_value": int(painted)}
        for head, ((name, values), painted) in enumerate(zip(heads, bundle.dataset_json["regions_class_order"]))
    ]


def _tilewise_version() -> str:
    try:
        return metadata.version("tilewise")
    except metadata.PackageNotFoundError:
        return "unknown"

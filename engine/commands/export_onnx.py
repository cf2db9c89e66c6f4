"""``tilewise export-onnx``: write each fold of a model as ONNX (dynamic batch axis) plus a JSON sidecar."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..backends.onnx_export import DEFAULT_OPSET, SIDECAR_NAME


def add_export_onnx_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export-onnx`` sub-command to the ``tilewise`` command's sub-parsers."""
    parser = subparsers.add_parser(
        "export-onnx", help="write each fold of a model as an ONNX file for ONNX Runtime or TensorRT",
        description=f"Write DIR/fold_X.onnx per fold (input 'image' and output 'logits', dynamic batch axis) and "
                    f"DIR/{SIDECAR_NAME} with the patch size, spacing, normalisation, labels and mirror axes.")
    parser.add_argument("-m", "--model", dest="model", required=True, help="nnU-Net trained model folder (dataset.json, plans.json, fold_*), or 'demo' for the bundled model")
    parser.add_argument("-o", "--output", dest="output", required=True, type=Path, help="output folder (created if missing; files of the same name are replaced)")
    parser.add_argument("-f", "--folds", dest="folds", nargs="+", default=None, help="folds to export (default: every fold with a checkpoint)")
    parser.add_argument("-chk", "--checkpoint", dest="checkpoint", default=None, help="checkpoint file name (default: checkpoint_final.pth, else checkpoint_best.pth)")
    parser.add_argument("--trust-model", dest="trust_model", action="store_true", help="allow checkpoints that need full unpickling (can run code: only for models you trust)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}; older ones are converted and may fail)")


def run_export_onnx(args: argparse.Namespace) -> int:
    """Run the export-onnx command; returns the exit status (errors are raised as TilewiseError)."""
    from ..model.bundle import ModelBundle
    from ..backends.onnx_export import export_onnx

    bundle = ModelBundle.load(args.model, folds=args.folds, checkpoint_name=args.checkpoint, trust=args.trust_model)
    result = export_onnx(bundle, args.output, opset=args.opset)
    for fold, path in result.files.items():
        print(f"fold {fold}: {path}", file=sys.stderr)
    print(f"tilewise: {len(result.files)} fold(s) exported to {args.output} in {result.seconds:.1f}s; "
          f"settings in {result.sidecar.name}", file=sys.stderr)
    return 0

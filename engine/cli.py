"""The ``tilewise`` command: predict, bench and models (flags compatible with nnU-Net's predict CLI)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import TilewiseError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Model and speed flags shared by ``predict`` and ``bench`` (names as in nnUNetv2_predict_from_modelfolder)."""
    parser.add_argument("-m", dest="model", required=True, help="nnU-Net trained model folder (dataset.json, plans.json, fold_*), or 'demo' for the bundled model")
    parser.add_argument("-f", dest="folds", nargs="+", default=None, help="folds to use (default: the preset's choice)")
    parser.add_argument("--preset", default="reference", help="reference (nnU-Net's default), balanced, fast or preview")
    parser.add_argument("-step_size", "--step-size", dest="step_size", type=float, default=None, help="tile step as a fraction of the tile (nnU-Net: 0.5)")
    parser.add_argument("--disable_tta", "--no-mirroring", dest="disable_tta", action="store_true", help="no test-time mirroring")
    parser.add_argument("-device", "--device", dest="device", default="auto", help="auto, cpu, cuda, cuda:N, mps, or gpu / gpu.N (an Intel GPU through OpenVINO)")
    parser.add_argument("-chk", dest="checkpoint", default=None, help="checkpoint file name (default: checkpoint_final.pth, else checkpoint_best.pth)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "reduced"), default=None, help="forward-pass precision")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="tiles per forward pass (0 = automatic)")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default=None, help="forward-pass engine: auto (CUDA/MPS torch, else OpenVINO if installed, else torch), torch or openvino")
    parser.add_argument("--skip-empty-tiles", dest="skip_empty_tiles", action=argparse.BooleanOptionalAction, default=None, help="do not run tiles entirely outside the body (default: the preset's choice; on for fast and preview)")
    parser.add_argument("--trust-model", dest="trust_model", action="store_true", help="allow checkpoints that need full unpickling (can run code: only for models you trust)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tilewise`` command."""
    parser = argparse.ArgumentParser(
        prog="tilewise", description="Fast nnU-Net v2 inference with live feedback. Without a command, "
        "'tilewise [IMAGE] [-m MODEL]' opens the viewer; 'tilewise --self-test' checks this installation.")
    commands = parser.add_subparsers(dest="command")

    predict = commands.add_parser("predict", help="segment images with an nnU-Net model")
    predict.add_argument("-i", dest="input", required=True, help="image file, folder of nnU-Net-named cases (case_0000.nii.gz) or DICOM folder")
    predict.add_argument("-o", dest="output", required=True, help="output folder (same case names and file type as the input)")
    predict.add_argument("--channels", nargs="+", type=Path, default=None, help="explicit channel files of one case, in channel order")
    add_run_options(predict)
    predict.add_argument("--save_probabilities", action="store_true", help="also write <case>.npz/.pkl as nnU-Net does")
    predict.add_argument("--continue_prediction", action="store_true", help="skip cases whose output already exists")
    predict.add_argument("--report", type=Path, default=None, help="write a JSON report (settings, per-stage timings) to this file")
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    predict.add_argument("--verbose", action="store_true", help="print settings and per-stage timings")
    predict.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    predict.add_argument("-npp", type=int, default=None, help="accepted for nnU-Net compatibility; Tilewise preprocesses in-process")
    predict.add_argument("-nps", type=int, default=None, help="accepted for nnU-Net compatibility; Tilewise exports in-process")

    bench = commands.add_parser("bench", help="time our engine (and nnU-Net's predictor) on one image")
    bench.add_argument("-i", dest="input", required=True, help="image file (or nnU-Net-named case file) to segment")
    add_run_options(bench)
    bench.add_argument("--against", choices=("nnunet",), default=None, help="also run nnUNetv2_predict_from_modelfolder with the same settings")
    bench.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default: a temporary folder)")

    models = commands.add_parser("models", help="list nnU-Net models in folders (default: $nnUNet_results)")
    models.add_argument("folders", nargs="*", type=Path, help="folders to search")

    from .export_onnx_command import add_export_onnx_parser

    add_export_onnx_parser(commands)
    return parser


COMMANDS: tuple[str, ...] = ("predict", "bench", "models", "export-onnx")
VIEWER_MODULE = "tilewise.gui.app"


VIEWER_REQUIREMENTS: tuple[str, ...] = ("napari", "qtpy", "superqt", "qtawesome")


def _missing_viewer_module() -> str | None:
    """The first module of the ``gui`` extra that cannot be imported, or None when all are there."""
    import importlib.util

    for name in VIEWER_REQUIREMENTS:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def open_viewer(argv: list[str]) -> int:
    """Start the desktop viewer (``tilewise [PATH] [-m MODEL]``); it lives in the optional ``gui`` extra.

    Imported by name at call time so that the engine itself never imports Qt or napari.
    """
    import importlib

    missing = _missing_viewer_module()
    if missing is not None:
        print(f"tilewise: error: the viewer is not installed ({missing} is missing); "
              "install it with: pip install 'tilewise[gui]'", file=sys.stderr)
        return EXIT_USAGE
    viewer = importlib.import_module(VIEWER_MODULE)
    return int(viewer.main(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tilewise`` console script: a sub-command, or the viewer when none is given."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--self-test"]:
        from .self_test import run_self_test

        return run_self_test(arguments[1:])
    if not arguments or (arguments[0] not in COMMANDS and arguments[0] not in ("-h", "--help")):
        return open_viewer(arguments)
    parser = build_parser()
    args = parser.parse_args(arguments)
    try:
        if args.command == "predict":
            from .predict_command import run_predict

            return run_predict(args)
        if args.command == "bench":
            from .bench import run_bench

            return run_bench(args)
        if args.command == "export-onnx":
            from .export_onnx_command import run_export_onnx

            return run_export_onnx(args)
        from .catalog import run_models

        return run_models(args)
    except TilewiseError as error:
        print(f"tilewise: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("tilewise: interrupted; no partial output was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def console() -> None:
    """Console-script wrapper that exits with :func:`main`'s status."""
    sys.exit(main())


def preset_from_args(args: argparse.Namespace):  # noqa: ANN201 - returns Preset (import kept lazy)
    """The chosen preset with command-line overrides applied."""
    from .presets import get_preset

    return get_preset(args.preset).with_overrides(
        tile_step=args.step_size,
        mirroring=False if args.disable_tta else None,
        precision=args.precision,
        batch_size=args.batch_size,
        backend=args.backend,
        skip_empty_tiles=args.skip_empty_tiles,
    )


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON atomically."""
    from .safe_output import atomic_output

    with atomic_output(path) as staging:
        staging.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    console()

"""The ``tilewise`` command: predict, bench and models (flags compatible with nnU-Net's predict CLI)."""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import OutOfMemoryError, TilewiseError
from ..model.suitability import InputPolicy, set_input_policy
from ..model.totalseg import check_task_flags, task_name
from ..runtime.allocator import keep_freed_host_memory
from ..runtime.memory import is_out_of_memory
from .options import (
    add_input_check_option,
    add_output_type_option,
    add_prev_stage_option,
    add_run_options,
    add_uncertainty_option,
)
from .pacs_io import add_pacs_options

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tilewise`` command."""
    parser = argparse.ArgumentParser(
        prog="tilewise", description="Fast nnU-Net v2 inference with live feedback. Without a command, "
        "'tilewise [IMAGE] [-m MODEL]' opens the viewer; 'tilewise --self-test' checks this installation.")
    parser.add_argument("--self-test", dest="self_test", action="store_true",
                        help="check this installation (engine, model, viewer) and exit")
    parser.add_argument("--version", action="version", version=f"tilewise {package_version()}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command")

    predict = commands.add_parser("predict", help="segment images with an nnU-Net model")
    predict.add_argument("-i", dest="input", required=True, help="image file, folder of nnU-Net-named cases (case_0000.nii.gz), DICOM folder, or a series or study on a PACS: dicomweb+http(s)://HOST:PORT/dicom-web/studies/UID/series/UID (DICOMweb) or dicom://AET@HOST:PORT/studies/UID/series/UID (DIMSE)")
    predict.add_argument("-o", dest="output", required=True, help="output folder (same case names and file type as the input, or see --output-type)")
    predict.add_argument("--channels", nargs="+", type=Path, default=None, help="explicit channel files of one case, in channel order")
    predict.add_argument("--series-uid", dest="series_uid", nargs="+", default=None, metavar="UID", help="the DICOM series to read (default: the largest image series); several UIDs: each DICOM input holds one")
    add_run_options(predict)
    add_output_type_option(predict)
    add_pacs_options(predict)
    add_input_check_option(predict)
    add_prev_stage_option(predict)
    predict.add_argument("--save_probabilities", action="store_true", help="also write <case>.npz/.pkl as nnU-Net does")
    add_uncertainty_option(predict)
    predict.add_argument("--continue_prediction", action="store_true", help="skip cases whose output already exists")
    predict.add_argument("--report", type=Path, default=None, help="write a JSON report (settings, per-stage timings) to this file")
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    predict.add_argument("--verbose", action="store_true", help="print settings and per-stage timings")
    predict.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    predict.add_argument("-npp", type=int, default=None, help="accepted for nnU-Net compatibility; Tilewise preprocesses in-process")
    predict.add_argument("-nps", type=int, default=None, help="accepted for nnU-Net compatibility; Tilewise exports in-process")

    from .batch_options import add_batch_parser

    add_batch_parser(commands)
    add_pacs_options(commands.choices["batch"])
    add_input_check_option(commands.choices["batch"])

    bench = commands.add_parser("bench", help="time our engine (and nnU-Net's predictor) on one image")
    bench.add_argument("-i", dest="input", required=True, help="image file (or nnU-Net-named case file) to segment; with --batch a folder of cases")
    add_run_options(bench)
    bench.add_argument("--against", choices=("nnunet", "totalsegmentator"), default=None, help="also run nnUNetv2_predict_from_modelfolder with the same settings (for -m totalseg:TASK: TotalSegmentator's own command)")
    bench.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default: a temporary folder)")
    bench.add_argument("--batch", action="store_true", help="-i is a folder of cases: cases per minute of 'tilewise batch' against nnUNetv2_predict_from_modelfolder (its default worker pools), then a resume over the finished folder")
    bench.add_argument("--workers", type=int, default=1, help="with --batch: 'tilewise batch --workers' (default 1)")

    models = commands.add_parser("models", help="list nnU-Net models in folders (default: $nnUNet_results)")
    models.add_argument("folders", nargs="*", type=Path, help="folders to search")

    from .export_onnx import add_export_onnx_parser

    add_export_onnx_parser(commands)
    from .listen import add_listen_parser

    add_listen_parser(commands)
    return parser


COMMANDS: tuple[str, ...] = ("predict", "bench", "models", "export-onnx", "batch", "listen")
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
    if _display_missing():
        print("tilewise: error: no display for the viewer (DISPLAY is not set); run headless with 'tilewise "
              "predict -i IMAGE -o OUT -m MODEL' or check the installation with 'tilewise --self-test'",
              file=sys.stderr)
        return EXIT_USAGE
    viewer = importlib.import_module(VIEWER_MODULE)
    return int(viewer.main(argv))


def _display_missing() -> bool:
    """True on Linux without an X11 or Wayland display (and no offscreen Qt platform): Qt would abort there."""
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _unknown_command(word: str) -> int:
    """One line for a first word that is neither a command, an option nor an existing image."""
    close = difflib.get_close_matches(word, [*COMMANDS, "--self-test"], n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; commands: {', '.join(COMMANDS)}, --self-test"
    print(f"tilewise: error: unknown command '{word}'{hint}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tilewise`` console script: a sub-command, or the viewer when none is given."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--self-test"]:
        from .self_test import run_self_test

        keep_freed_host_memory()
        return run_self_test(arguments[1:])
    if arguments[:1] == ["--version"]:
        print(f"tilewise {package_version()}")
        return 0
    first = arguments[0] if arguments else None
    if first is not None and first not in COMMANDS and first not in ("-h", "--help"):
        if not first.startswith("-") and not Path(first).exists():
            return _unknown_command(first)
    if first is None or (first not in COMMANDS and first not in ("-h", "--help")):
        return open_viewer(arguments)
    parser = build_parser()
    args = parser.parse_args(arguments)
    previous_policy = None
    try:
        if args.command in ("predict", "batch"):
            keep_freed_host_memory()  # this process only runs inference: the allocator tuning is ours to set
            from .pacs_io import pacs_job

            with pacs_job(args) as finish:  # a PACS -i is pulled first; --send stores the results after
                previous_policy = _before_the_work(args)
                return finish(_run_inference(args))
        if args.command == "bench" and task_name(args.model) is not None and not args.batch:
            from .bench_task import run_bench_task

            return run_bench_task(args)
        if args.command == "bench":  # one nnU-Net model folder (a task's batch is refused in one line)
            check_task_flags(args.model, args.fast, args.roi_subset, args.statistics, "bench --batch")
        if args.command == "bench" and args.batch:
            from .bench_batch import run_bench_batch

            return run_bench_batch(args)
        if args.command == "bench":
            from .bench import run_bench

            return run_bench(args)
        if args.command == "listen":
            from .listen import run_listen

            return run_listen(args)
        if args.command == "export-onnx":
            from .export_onnx import run_export_onnx

            return run_export_onnx(args)
        from .models import run_models

        return run_models(args)
    except TilewiseError as error:
        print(f"tilewise: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("tilewise: interrupted; no partial output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RuntimeError, MemoryError) as error:  # an allocation failure a library raised past the fallbacks
        if not is_out_of_memory(error):
            raise
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        on_cpu = str(getattr(args, "device", "")).startswith("cpu")
        print(f"tilewise: error: out of memory ({first}); try a faster preset, fewer folds"
              + (" or --batch-size 1" if on_cpu else ", --batch-size 1 or --device cpu"), file=sys.stderr)
        return OutOfMemoryError.exit_code
    finally:
        if previous_policy is not None:  # in-process callers (tests, a host application) get their policy back
            set_input_policy(previous_policy)


def _run_inference(args: argparse.Namespace) -> int:
    """Run ``predict`` or ``batch``; its exit status."""
    if args.command == "predict":
        from .predict import run_predict

        return run_predict(args)
    from .batch import run_batch

    return run_batch(args)


def _before_the_work(args: argparse.Namespace) -> InputPolicy:
    """The pre-flight (:mod:`.preflight`: paths, headers, model JSON, before the model loads) and, for the run, what
    to do with an image unlike the model's training data (warn on stderr, or refuse with ``--strict-input``);
    returns the input policy it replaced."""
    from .preflight import preflight

    preflight(args)
    return set_input_policy(InputPolicy(strict=args.strict_input, warn=_warn))


def _warn(source: str, message: str) -> None:
    print(f"tilewise: warning: {source}: {message}", file=sys.stderr)


def package_version() -> str:
    """The installed distribution's version ('unknown' when running from a source tree without metadata)."""
    from importlib import metadata

    try:
        return metadata.version("tilewise")
    except metadata.PackageNotFoundError:
        return "unknown"


def console() -> None:
    """Console-script wrapper that exits with :func:`main`'s status."""
    sys.exit(main())

"""What the sub-commands share: the model and speed flags (nnU-Net's names), presets from flags, the output type
flag."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.dicom.seg import DEFAULT_SEG_TYPE, SEG_TYPES
from ..data.outputs import OUTPUT_SUFFIXES
from ..presets import Preset, get_preset


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Model and speed flags shared by ``predict`` and ``bench`` (names as in nnUNetv2_predict_from_modelfolder)."""
    parser.add_argument("-m", dest="model", required=True, help="nnU-Net trained model folder (dataset.json, plans.json, fold_*), 'demo' for the bundled model, or a TotalSegmentator task: totalseg:total ('tilewise models' lists the installed ones)")
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
    parser.add_argument("--nnunet-exact", dest="nnunet_exact", action="store_true", help="reproduce nnUNetv2_predict_from_modelfolder's output voxel for voxel (PyTorch, batch 1, nnU-Net's float16 sums, tile order, preprocessing and export)")
    parser.add_argument("--trust-model", dest="trust_model", action="store_true", help="allow checkpoints that need full unpickling (can run code: only for models you trust)")
    parser.add_argument("--fast", action="store_true", help="with -m totalseg:TASK: TotalSegmentator's fast model (3 mm for total, as its --fast)")
    parser.add_argument("-rs", "--roi_subset", dest="roi_subset", nargs="+", default=None, metavar="NAME", help="with -m totalseg:total or total_mr: only these structures (TotalSegmentator's names), running only the models that hold them on the image cropped around them")
    parser.add_argument("--statistics", action="store_true", help="with -m totalseg:TASK: also write TotalSegmentator's volume and mean intensity per structure (<case>_statistics.json)")


def add_uncertainty_option(parser: argparse.ArgumentParser) -> None:
    """``--save_uncertainty``, shared by ``predict`` and ``batch``: the per-voxel uncertainty map and each case's
    uncertain volume (:mod:`~tilewise.engine.postprocess.uncertainty`)."""
    parser.add_argument(
        "--save_uncertainty", "--save-uncertainty", dest="save_uncertainty", action="store_true",
        help="also write <case>_uncertainty<ext> beside the labels (uint8 percent: 0 = certain, 100 = the two most "
             "likely classes tie; NIfTI beside a DICOM output) and each case's uncertain volume (mL of voxels at 50 "
             "or more: in batch_summary.json, and printed by predict); not for TotalSegmentator tasks or --ray")


def add_input_check_option(parser: argparse.ArgumentParser) -> None:
    """``--strict-input``, shared by ``predict`` and ``batch``: refuse images unlike the model's training data."""
    parser.add_argument(
        "--strict-input", dest="strict_input", action="store_true",
        help="refuse (exit 2; in batch: fail the case) an image that differs from what the model was trained on "
             "(modality, intensities, voxel spacing over 3x off, NaN voxels) instead of printing a warning")


def preset_from_args(args: argparse.Namespace) -> Preset:
    """The chosen preset with command-line overrides applied."""
    return get_preset(args.preset).with_overrides(
        tile_step=args.step_size,
        mirroring=False if args.disable_tta else None,
        precision=args.precision,
        batch_size=args.batch_size,
        backend=args.backend,
        skip_empty_tiles=args.skip_empty_tiles,
    )


def add_output_type_option(parser: argparse.ArgumentParser) -> None:
    """``--output-type`` and ``--seg-type``, shared by ``predict`` and ``batch``."""
    parser.add_argument(
        "--output-type", dest="output_type", choices=("same", *OUTPUT_SUFFIXES), default="same",
        help="label file type: same (the input's; NIfTI for DICOM), nifti, nrrd, mha, or for a DICOM series input "
             "dicom-seg (<case>_seg.dcm, a DICOM Segmentation) or dicom-rtstruct (<case>_rtstruct.dcm, RT "
             "contours); the DICOM types need: pip install \"tilewise[dicom]\"")
    parser.add_argument(
        "--seg-type", dest="seg_type", choices=SEG_TYPES, default=DEFAULT_SEG_TYPE,
        help="with --output-type dicom-seg: binary (the default: one bit per pixel and segment, read by every PACS "
             "and viewer) or labelmap (DICOM's 2024 Label Map Segmentation: smaller and faster to write, not yet "
             "read everywhere)")


def add_prev_stage_option(parser: argparse.ArgumentParser) -> None:
    """``-prev_stage_predictions``, shared by ``predict`` and ``batch`` (nnU-Net's flag, for a cascade stage)."""
    parser.add_argument(
        "-prev_stage_predictions", "--prev_stage_predictions", "--prev-stage-predictions",
        dest="prev_stage_predictions", type=Path, default=None, metavar="FOLDER",
        help="for a 3d_cascade_fullres model: the previous (3d_lowres) stage's segmentations, one per case named "
             "<case> plus the model's file ending (as nnU-Net writes them), used instead of running that stage")

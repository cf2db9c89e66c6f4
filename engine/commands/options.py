"""What the sub-commands share: the model and speed flags (nnU-Net's names), presets from flags, the output type
(and writing each case's labels in it), JSON reports."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.cases import Case
from ..data.dicom.source import DicomSource, read_source_series, require_dicom_extra
from ..data.readers import image_suffix
from ..data.safe_output import atomic_output
from ..data.volume import Geometry
from ..data.writers import write_labels
from ..errors import InputError
from ..presets import Preset, get_preset

if TYPE_CHECKING:
    from ..data.dicom.seg import AlgorithmInfo
    from ..predictor import Predictor

OUTPUT_SUFFIXES: dict[str, str] = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom-seg": "_seg.dcm",
                                   "dicom-rtstruct": "_rtstruct.dcm"}
"""What ``--output-type`` appends to a case's name; 'same' (the default) keeps the input's file type."""
DICOM_OUTPUTS: tuple[str, ...] = ("dicom-seg", "dicom-rtstruct")


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
    parser.add_argument("--nnunet-exact", dest="nnunet_exact", action="store_true", help="reproduce nnUNetv2_predict_from_modelfolder's output voxel for voxel (PyTorch, batch 1, nnU-Net's float16 sums, tile order, preprocessing and export)")
    parser.add_argument("--trust-model", dest="trust_model", action="store_true", help="allow checkpoints that need full unpickling (can run code: only for models you trust)")


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
    """``--output-type``, shared by ``predict`` and ``batch``."""
    parser.add_argument(
        "--output-type", dest="output_type", choices=("same", *OUTPUT_SUFFIXES), default="same",
        help="label file type: same (the input's; NIfTI for DICOM), nifti, nrrd, mha, or for a DICOM series input "
             "dicom-seg (<case>_seg.dcm, a DICOM Segmentation) or dicom-rtstruct (<case>_rtstruct.dcm, RT "
             "contours); the DICOM types need: pip install \"tilewise[dicom]\"")


def with_output_type(cases: list[Case], output_type: str) -> list[Case]:
    """``cases`` with their outputs renamed for ``output_type`` ('same' leaves them as they are).

    Raises, before any work, :class:`InputError` for a DICOM output type and a case that is not one DICOM series
    folder, and :class:`TilewiseError` when the ``dicom`` extra is not installed.
    """
    if output_type == "same":
        return cases
    if output_type in DICOM_OUTPUTS:
        for case in cases:
            if len(case.inputs) != 1 or image_suffix(case.inputs[0]) is not None:
                raise InputError(case.inputs[0], f"--output-type {output_type} needs a DICOM input (a DICOM series "
                                                 "folder); this case is a NIfTI, NRRD or MetaImage file")
        require_dicom_extra(output_type)
    suffix = OUTPUT_SUFFIXES[output_type]
    return [replace(case, output=case.output.with_name(case.name + suffix)) for case in cases]


def algorithm_of(predictor: Predictor) -> AlgorithmInfo:
    """The model, folds and preset of ``predictor`` as a DICOM output records them."""
    from ..data.dicom.seg import AlgorithmInfo

    bundle = predictor.bundle
    return AlgorithmInfo(model_name=f"{bundle.dataset_name} {bundle.configuration_name}",
                         folds=tuple(str(f) for f in predictor.settings.folds), preset=predictor.preset.name)


def is_dicom_output(path: Path) -> bool:
    """True when ``path`` is named for a DICOM SEG or RTSTRUCT (see :func:`with_output_type`)."""
    return path.name.endswith(tuple(OUTPUT_SUFFIXES[t] for t in DICOM_OUTPUTS))


def check_dicom_references(path: Path, dicom_files: tuple[Path, ...]) -> None:
    """Before any work: raise :class:`InputError` when ``path`` is a DICOM output that the case's source files
    cannot be referenced by (no DICOM input, or a file without the UIDs a SEG/RTSTRUCT copies)."""
    if is_dicom_output(path):
        read_source_series(dicom_files)


def write_case_labels(predictor: Predictor, labels: np.ndarray, geometry: Geometry, dicom_files: tuple[Path, ...],
                      path: Path) -> None:
    """Write one case's labels at ``path`` in the type its name says (see :func:`with_output_type`), atomically:
    ``*_seg.dcm`` a DICOM SEG and ``*_rtstruct.dcm`` an RTSTRUCT referencing ``dicom_files``, else an image file."""
    name = path.name
    if not is_dicom_output(path):
        write_labels(labels, geometry, path)
        return
    source = DicomSource(geometry, dicom_files)
    if name.endswith(OUTPUT_SUFFIXES["dicom-seg"]):
        from ..data.dicom.seg import write_dicom_seg

        write_dicom_seg(labels, source, predictor.bundle.label_names, path, algorithm_of(predictor))
    else:
        from ..data.dicom.rtstruct import write_rtstruct

        write_rtstruct(labels, source, predictor.bundle.label_names, path, algorithm_of(predictor))


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON atomically."""
    with atomic_output(path) as staging:
        staging.write_text(json.dumps(payload, indent=2))

"""Cheap checks first: what ``predict`` and ``batch`` can refuse from the paths, the inputs' headers and the model's
JSON files is refused here, in about a second, before any checkpoint is read or network built.

- the model folder: it exists (a ``fold_N`` folder names its parent), dataset.json and plans.json pass the schema
  (:mod:`~tilewise.engine.model.schema`), the folds asked for exist, plans.json's classes are allowed without trust;
- the output: ``-o`` is not an input file (nor a link to one), no output lands on an input, no output name is an
  existing folder, the destination can be written (read-only, permission: exit 3) and has room for the outputs
  (exit 3);
- the inputs (``predict``): every header readable, 2D or 3D (a 2D image only for a 2D model), a DICOM folder with a
  usable series, a zip without entries outside its folder and no zip bomb.

Only read-only calls into :mod:`~tilewise.engine.data` and the batch's case list; nothing is written but a probe
file, removed at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..batch.cases import collect_batch_cases, shard
from ..data.cases import Case, collect_cases, planned_outputs
from ..data.dicom.seg import segmentation_type_value
from ..data.dicom.zips import readable_size
from ..data.outputs import with_output_type
from ..data.previous_stage import check_previous_stage_file, previous_stage_file
from ..data.readers import ImageHeader, image_suffix, read_header
from ..data.safe_output import refuse_overwriting_inputs
from ..data.uncertainty_file import uncertainty_path, uncertainty_paths
from ..errors import DiskSpaceError, InputError, ModelError, output_error
from ..model.bundle import available_folds, check_model_folder, read_json
from ..model.checkpoint import check_plans
from ..model.schema import check_dataset_json, output_channels, validate_model_json
from ..model.totalseg import check_task_flags, task_name

COMPRESSED_SUFFIXES = (".nii.gz", ".seg.nrrd")
COMPRESSION = 20
"""Label maps compress at least this much in gzip (large uniform regions): the free space asked for a .nii.gz."""
MARGIN_BYTES = 1_000_000
"""Headers, the report and the summary on top of the label maps."""
_TRAINED_FOLDER = re.compile(r"^.+?__.+?__(?P<configuration>.+)$")


def model_configuration(model_dir: Path, plans: dict[str, Any], folds: list[str] | None,
                        checkpoint_name: str | None) -> str | None:
    """The configuration the model's checkpoints were trained with, known without reading them: a fold's
    ``debug.json`` (nnU-Net writes one), the trained-model folder's name (``Trainer__Plans__3d_fullres``), or the
    only configuration the plans hold; None when none says."""
    present = available_folds(model_dir, checkpoint_name)
    for fold in (folds or present)[:1]:
        try:
            debug = json.loads((model_dir / f"fold_{fold}" / "debug.json").read_text())
        except (OSError, ValueError):
            debug = {}
        name = debug.get("configuration") or debug.get("configuration_name") if isinstance(debug, dict) else None
        if isinstance(name, str) and name in (plans.get("configurations") or {}):
            return name
    match = _TRAINED_FOLDER.match(model_dir.name)
    if match and match["configuration"] in (plans.get("configurations") or {}):
        return match["configuration"]
    names = list(plans.get("configurations") or {})
    return names[0] if len(names) == 1 else None


def read_model(args: argparse.Namespace) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The model folder, its dataset.json (checked: channels and labels) and its plans.json (parsed only)."""
    folder = check_model_folder(args.model)
    dataset, plans = read_json(folder / "dataset.json"), read_json(folder / "plans.json")
    check_dataset_json(dataset, folder / "dataset.json")
    return folder, dataset, plans


def check_model(args: argparse.Namespace, folder: Path, dataset: dict[str, Any], plans: dict[str, Any]) -> None:
    """Every model check that needs no checkpoint: the schema of both JSON files, the folds asked for, the classes
    plans.json names for the checkpoints' configuration (when known) allowed without trust. Run after the cheaper
    checks: the schema's first lookups import nnunetv2's preprocessing modules (about a second, which the run
    would spend anyway)."""
    validate_model_json(dataset, plans, folder, args.trust_model)
    present = available_folds(folder, args.checkpoint)
    if not present:
        raise ModelError(folder, f"no trained folds found (expected fold_*/{args.checkpoint or 'checkpoint_final.pth'})")
    missing = [str(f) for f in args.folds or [] if str(f) not in present]
    if missing:
        raise ModelError(folder, f"fold(s) {', '.join(missing)} not found; available: {', '.join(present)}")
    configuration = model_configuration(folder, plans, args.folds, args.checkpoint)
    if configuration is not None:
        check_plans(plans, configuration, folder / "plans.json", args.trust_model)


def _existing_ancestor(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (where the run's first folder will be made)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output_folder(output_dir: Path, inputs: list[Path]) -> Path:
    """Refuse an ``-o`` that is an input (or a link to one), a file, or under a file; then probe that its folder (or
    the nearest existing one above it) can be written. Returns that folder."""
    if output_dir.exists() and not output_dir.is_dir():
        try:
            refuse_overwriting_inputs([output_dir], inputs)
        except InputError:
            raise InputError(output_dir, "-o names an input image (or a link to one); -o takes the output folder, "
                                         "e.g. -o results") from None
        raise InputError(output_dir, "is a file; -o takes a folder for the outputs")
    folder = _existing_ancestor(output_dir)
    if not folder.is_dir():
        raise InputError(output_dir, f"cannot be made: {folder} is a file, not a folder")
    _probe_writable(folder, output_dir)
    return folder


def _probe_writable(folder: Path, output_dir: Path) -> None:
    """Create and remove a small file in ``folder``: the only sure test (read-only mounts, ACLs, quotas, root)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".tilewise-probe-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as error:  # worded as a failed write says it (one place: errors.output_error)
        raise output_error(error, folder / ".tilewise-probe") from None


def check_outputs(outputs: list[Path], inputs: list[Path]) -> None:
    """No output onto an input (also through a symlink or hard link), and no output name that is an existing
    folder."""
    refuse_overwriting_inputs(outputs, inputs)
    for output in outputs:
        if output.is_dir():
            raise InputError(output, "is an existing folder where an output file would be written; remove or "
                                     "rename that folder, or choose another output folder")


def expected_output_bytes(cases: list[Case], headers: dict[Path, ImageHeader | None], heads: int,
                          with_probabilities: bool, with_uncertainty: bool = False) -> int:
    """A lower bound on what the run writes: each case's label map (1 byte a voxel, gzip-compressed ones by
    :data:`COMPRESSION`), nnU-Net's probabilities when asked (float16 per output, compressed about 2x), the
    uncertainty map when asked (as a label map: 0 almost everywhere), a margin."""
    total = MARGIN_BYTES
    for case in cases:
        header = headers.get(case.inputs[0])
        if header is None or header.voxels == 0:
            continue
        maps = [case.output] + ([uncertainty_path(case)] if with_uncertainty else [])
        total += sum(header.voxels // (COMPRESSION if path.name.endswith(COMPRESSED_SUFFIXES) else 1) for path in maps)
        total += header.voxels * heads if with_probabilities else 0
    return total


def check_free_space(folder: Path, output_dir: Path, needed: int) -> None:
    """Raise :class:`DiskSpaceError` (exit 3) when ``folder``'s disk has less free space than ``needed``."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskSpaceError(output_dir, f"the outputs need about {readable_size(needed)} but {folder} has "
                                         f"{readable_size(free)} free; free some space or choose another folder")


def check_headers(cases: list[Case], is_2d: bool | None, series_uid: Any,
                  channel_names: list[str]) -> dict[Path, ImageHeader | None]:
    """Every case's input headers (:func:`~tilewise.engine.data.readers.read_header`); a 2D image is refused for a
    model known to be 3D (``is_2d`` False), and a case whose files hold another number of channels (vector
    voxels count as channels) than the model's ``channel_names``."""
    headers: dict[Path, ImageHeader | None] = {}
    for case in cases:
        for path in case.inputs:
            header = read_header(path, series_uid)
            headers[path] = header
            if header is not None and header.dimension == 2 and is_2d is False:
                raise InputError(path, "is a 2D image but the model needs a 3D volume")
        known = [headers[path] for path in case.inputs]
        found = sum(header.components for header in known if header is not None)
        if all(header is not None for header in known) and found != len(channel_names):
            raise InputError(case.inputs[0], f"has {found} channel(s) but the model needs {len(channel_names)} "
                                             f"({', '.join(channel_names)})")
    return headers


def preflight_predict(args: argparse.Namespace) -> None:
    """Every check ``tilewise predict`` can make before the model loads, cheapest first; raises a
    :class:`TilewiseError`."""
    folder, dataset, plans = read_model(args)
    channels = dataset.get("channel_names") or dataset.get("modality")
    names = [str(channels[k]) for k in sorted(channels, key=int)]
    output_dir, source = Path(args.output), Path(args.input)
    writable = check_output_folder(output_dir, [Path(p) for p in args.channels] if args.channels else [source])
    cases = with_output_type(collect_cases(source, output_dir, len(names), args.channels), args.output_type)
    check_outputs(planned_outputs(cases, args.save_probabilities, args.report)
                  + uncertainty_paths(cases, args.save_uncertainty), [path for case in cases for path in case.inputs])
    configuration = model_configuration(folder, plans, args.folds, args.checkpoint)
    settings = (plans.get("configurations") or {}).get(configuration) if configuration else None
    patch = settings.get("patch_size") if isinstance(settings, dict) else None
    headers = check_headers(cases, None if not isinstance(patch, list) else len(patch) == 2, args.series_uid, names)
    check_model(args, folder, dataset, plans)
    check_previous_stage(args, folder, dataset, plans, cases)
    check_free_space(writable, output_dir, expected_output_bytes(cases, headers, output_channels(dataset),
                                                                 args.save_probabilities, args.save_uncertainty))


def check_previous_stage(args: argparse.Namespace, folder: Path, dataset: dict[str, Any], plans: dict[str, Any],
                         cases: list[Case]) -> None:
    """With ``-prev_stage_predictions``: the model is a cascade stage (when its configuration is known), and every
    case has its previous-stage segmentation in that folder, named as nnU-Net names it, on its image's grid
    (headers only; an input that is not one image file is compared once read)."""
    given = args.prev_stage_predictions
    if given is None:
        return
    if not Path(given).is_dir():
        raise InputError(given, "-prev_stage_predictions takes a folder (the previous stage's outputs)")
    configuration = model_configuration(folder, plans, args.folds, args.checkpoint)
    settings = (plans.get("configurations") or {}).get(configuration) if configuration else None
    if isinstance(settings, dict) and not settings.get("previous_stage"):
        raise ModelError(folder, f"is a '{configuration}' model, not a cascade stage: -prev_stage_predictions is "
                                 "for a 3d_cascade_fullres model")
    ending = str(dataset.get("file_ending", ".nii.gz"))
    for case in cases:
        check_previous_stage_file(previous_stage_file(Path(given), case.name, ending), case.inputs[0])


def preflight_batch(args: argparse.Namespace) -> None:
    """What ``tilewise batch`` can refuse for the whole job before the model loads: the model folder and schema, an
    output folder that is a file, an input, read-only or not writable, or without room for the cases still to do.
    Cases with problems of their own are the batch's to record."""
    folder, dataset, plans = read_model(args)
    output_dir = Path(args.output)
    writable = check_output_folder(output_dir, [Path(args.input)])
    check_model(args, folder, dataset, plans)
    channels = len(dataset.get("channel_names") or dataset.get("modality"))
    this_part = shard(collect_batch_cases(Path(args.input), output_dir, channels), args.num_parts, args.part_id)
    cases = [batch_case.case for batch_case in this_part
             if batch_case.problem is None and (args.overwrite or not batch_case.case.output.exists())]
    cases = with_output_type(cases, args.output_type)
    check_previous_stage(args, folder, dataset, plans, cases)
    check_free_space(writable, output_dir, expected_output_bytes(cases, _file_headers(cases), output_channels(dataset),
                                                                 args.save_probabilities, args.save_uncertainty))


def _file_headers(cases: list[Case]) -> dict[Path, ImageHeader | None]:
    """The headers of the cases' image files; a file whose header cannot be read is left to the batch, which
    records that case as failed while the others run."""
    headers: dict[Path, ImageHeader | None] = {}
    for case in cases:
        first = case.inputs[0]
        if first.is_file() and image_suffix(first) is not None:
            try:
                headers[first] = read_header(first)
            except InputError:
                continue
    return headers


def preflight(args: argparse.Namespace) -> None:
    """The pre-flight of ``args.command`` (predict or batch; nothing for the others)."""
    if getattr(args, "output_type", None) == "dicom-seg" and getattr(args, "seg_type", "binary") != "binary":
        segmentation_type_value(args.seg_type)  # a LABELMAP SEG the installed highdicom cannot write
    check_task_flags(args.model, args.fast, args.roi_subset, args.statistics, args.command)
    if args.command in ("predict", "batch") and task_name(args.model) is not None:  # a TotalSegmentator task
        from .preflight_task import preflight_task

        preflight_task(args)
        return
    if args.command == "predict":
        preflight_predict(args)
    elif args.command == "batch":
        preflight_batch(args)

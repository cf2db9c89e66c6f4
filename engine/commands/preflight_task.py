"""The pre-flight of ``predict`` and ``batch`` for ``-m totalseg:<task>``: the task resolved against the installed
weights (every model folder it runs present, its JSON files passing the schema), the output folder, the outputs
(labels, statistics, report) off the inputs, the inputs' headers (3D, one channel) and the free space, before any
model loads."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..batch.cases import collect_batch_cases, shard
from ..data.outputs import with_output_type
from ..errors import TilewiseError
from ..model.bundle import read_json
from ..model.schema import validate_model_json
from ..model.totalseg import TaskSpec
from .predict_task import task_cases, task_outputs, task_spec
from .preflight import (
    _file_headers,
    check_free_space,
    check_headers,
    check_output_folder,
    check_outputs,
    expected_output_bytes,
)


def check_task_models(spec: TaskSpec, trust: bool) -> list[str]:
    """The JSON files of every model the task runs (schema and allowed classes); the main models' channel names."""
    channels: list[str] = []
    for stage in spec.stages:
        for part in stage.parts:
            dataset, plans = read_json(part.folder / "dataset.json"), read_json(part.folder / "plans.json")
            validate_model_json(dataset, plans, part.folder, trust)
            if stage is spec.main and not channels:
                names = dataset.get("channel_names") or dataset.get("modality")
                channels = [str(names[k]) for k in sorted(names, key=int)]
    return channels


def preflight_task(args: argparse.Namespace) -> None:
    """Every check a task run can make before its models load; raises a :class:`TilewiseError`."""
    if args.command == "batch":
        preflight_task_batch(args)
        return
    spec = task_spec(args)
    channels = check_task_models(spec, args.trust_model)
    output_dir, source = Path(args.output), Path(args.input)
    writable = check_output_folder(output_dir, [Path(p) for p in args.channels] if args.channels else [source])
    cases = task_cases(args)
    check_outputs(task_outputs(args, cases), [path for case in cases for path in case.inputs])
    headers = check_headers(cases, False, args.series_uid, channels)
    check_free_space(writable, output_dir, expected_output_bytes(cases, headers, 1, False))


def preflight_task_batch(args: argparse.Namespace) -> None:
    """``tilewise batch -m totalseg:<task>``: the task and its models, the output folder and its free space."""
    if args.statistics:
        raise TilewiseError("--statistics", "is written by 'tilewise predict -m totalseg:...' (which takes a folder "
                                            "of cases too); tilewise batch does not write statistics yet")
    if args.ray is not None:
        raise TilewiseError("--ray", "runs one nnU-Net model per actor; TotalSegmentator tasks run in this process "
                                     "(drop --ray)")
    spec = task_spec(args)
    check_task_models(spec, args.trust_model)
    output_dir = Path(args.output)
    writable = check_output_folder(output_dir, [Path(args.input)])
    this_part = shard(collect_batch_cases(Path(args.input), output_dir, 1), args.num_parts, args.part_id)
    cases = [batch_case.case for batch_case in this_part
             if batch_case.problem is None and (args.overwrite or not batch_case.case.output.exists())]
    cases = with_output_type(cases, args.output_type)
    check_free_space(writable, output_dir, expected_output_bytes(cases, _file_headers(cases), 1, False))

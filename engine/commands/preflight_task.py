"""The pre-flight of ``predict`` for ``-m totalseg:<task>``: the task resolved against the installed weights (every
model folder it runs present, its JSON files passing the schema), the output folder, the outputs (labels,
statistics, report) off the inputs, the inputs' headers (3D, one channel) and the free space, before any model
loads."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import TilewiseError
from ..model.bundle import read_json
from ..model.schema import validate_model_json
from ..model.totalseg import TaskSpec
from .predict_task import task_cases, task_outputs, task_spec
from .preflight import check_free_space, check_headers, check_output_folder, check_outputs, expected_output_bytes


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
    if args.command != "predict":
        raise TilewiseError("-m", f"'tilewise {args.command}' does not run TotalSegmentator tasks yet; use "
                                  "'tilewise predict -m totalseg:<task>' (it takes a folder of cases too)")
    spec = task_spec(args)
    channels = check_task_models(spec, args.trust_model)
    output_dir, source = Path(args.output), Path(args.input)
    writable = check_output_folder(output_dir, [Path(p) for p in args.channels] if args.channels else [source])
    cases = task_cases(args)
    check_outputs(task_outputs(args, cases), [path for case in cases for path in case.inputs])
    headers = check_headers(cases, False, args.series_uid, channels)
    check_free_space(writable, output_dir, expected_output_bytes(cases, headers, 1, False))

"""Cascade pairs: a ``3d_cascade_fullres`` model folder and the ``3d_lowres`` folder whose prediction it takes.

nnU-Net trains the two stages into sibling folders of one results tree,
``<results>/<Dataset>/<Trainer>__<Plans>__3d_lowres`` and ``..._3d_cascade_fullres``, with the same plans, dataset
and trainer; the cascade stage's network takes the image channels plus one one-hot channel per foreground label of
the low-res stage's segmentation. This module finds the sibling and checks that it belongs to the cascade.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .bundle import ModelBundle, read_json


def previous_stage_dir(bundle: ModelBundle) -> Path:
    """The folder of ``bundle``'s previous stage, named as ``nnUNetv2_train`` names it next to ``bundle.path``
    (``<Trainer>__<Plans>__<previous stage>``), with the same plans and dataset description; raises
    :class:`ModelError` (one line) when it is missing or belongs to another model. Reads only its JSON files:
    :func:`check_pair` checks its checkpoints once they are loaded."""
    previous = bundle.previous_stage_name
    assert previous is not None, "not a cascade stage"
    plans_name = str(bundle.plans.get("plans_name", ""))
    sibling = bundle.path.parent / f"{bundle.trainer_name}__{plans_name}__{previous}"
    if not sibling.is_dir():
        raise ModelError(bundle.path, f"is a '{bundle.configuration_name}' cascade stage; it needs its '{previous}' "
                                      f"stage next to it, in {sibling} (not found)")
    plans, dataset = read_json(sibling / "plans.json"), read_json(sibling / "dataset.json")
    problems = []
    for key in ("plans_name", "dataset_name"):
        if plans.get(key) != bundle.plans.get(key):
            problems.append(f"plans.json {key} '{plans.get(key)}', not '{bundle.plans.get(key)}'")
    if plans.get("configurations", {}).get(previous) != bundle.plans.get("configurations", {}).get(previous):
        problems.append(f"its '{previous}' plans differ from those in {bundle.path / 'plans.json'}")
    for key in ("labels", "regions_class_order"):
        if dataset.get(key) != bundle.dataset_json.get(key):
            problems.append(f"its dataset.json {key} differ")
    if (dataset.get("channel_names") or dataset.get("modality")) != (
            bundle.dataset_json.get("channel_names") or bundle.dataset_json.get("modality")):
        problems.append("its dataset.json channels differ")
    _refuse(sibling, bundle, problems)
    return sibling


def check_pair(cascade: ModelBundle, previous: ModelBundle) -> None:
    """Raise :class:`ModelError` (one line naming ``previous``'s folder) unless ``previous``'s checkpoints are the
    stage ``cascade`` was trained on: the configuration it names, trained by the same trainer."""
    problems = []
    if previous.configuration_name != cascade.previous_stage_name:
        problems.append(f"its checkpoints are '{previous.configuration_name}', not '{cascade.previous_stage_name}'")
    if previous.trainer_name != cascade.trainer_name:
        problems.append(f"trainer '{previous.trainer_name}', not '{cascade.trainer_name}'")
    _refuse(previous.path, cascade, problems)


def _refuse(sibling: Path, cascade: ModelBundle, problems: list[str]) -> None:
    if problems:
        raise ModelError(sibling, f"is not the '{cascade.previous_stage_name}' stage of {cascade.path.name}: "
                                  f"{'; '.join(problems)}")

"""TotalSegmentator's tasks as one model each (``-m totalseg:total``): what running a task means, read from
TotalSegmentator's own task tables.

A task is one or two *stages*. A stage is what TotalSegmentator's ``nnUNet_predict_image`` does for one call: its
nnU-Net model(s) (``total`` has five parts, ``total_mr`` two, a sub-task one), the spacing the image is resampled to
first, nnU-Net's tile step (0.8 for the ``total`` tasks, else 0.5), the folds and the label map the parts merge into.
A task that crops (a sub-task such as ``liver_vessels``, or any ``--roi_subset``) first runs a crop stage, TotalSegmentator's
rough whole-body model, and crops to the structures it finds. The numbers (task ids, trainers, plans, spacings, class
maps, which parts hold which structure) come from the ``totalsegmentator`` package (the ``totalseg`` extra), imported
when a task is resolved; the decisions its Python API takes around them (which crop model, the 20 mm crop margin) are
restated here as it takes them, and its code is not copied: the steps themselves are imported from it where they run
(:mod:`~tilewise.engine.preprocess.totalseg_grid`, :mod:`~tilewise.engine.task_predictor`).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError

TASK_PREFIX = "totalseg:"
"""``-m totalseg:<task>`` names a TotalSegmentator task."""

MULTI_PART_MAPS = {
    "total": ("class_map_5_parts", "map_taskid_to_partname_ct"),
    "total_v3": ("class_map_5_parts_total_v3", "map_taskid_to_partname_ct_v3"),
    "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr"),
    "headneck_muscles": ("class_map_parts_headneck_muscles", "map_taskid_to_partname_headneck_muscles"),
}
"""Tasks of several nnU-Net models: the ``map_to_binary`` tables naming each part's structures (as
TotalSegmentator's ``nnUNet_predict_image`` chooses them)."""

STEP_0_8_TASKS = ("total", "total_v3", "total_mr")
"""TotalSegmentator runs these with a tile step of 0.8 (fewer tiles); every other task with nnU-Net's 0.5."""

UNSUPPORTED = {
    "cascade": "feeds a rough segmentation into its network (a cascade)",
    "crop_model": "crops with another task's result",
    "remove_outside": "removes what lies outside another task's structures",
}
"""Task settings Tilewise does not run yet, with what they do (the refusal names it)."""
UNSUPPORTED_TASKS = {"vertebrae_pp_refined": "refines its vertebrae with a second model's mask"}
CROP_MARGIN_MM = (20, 20, 20)
"""The margin TotalSegmentator's Python API puts around a crop made with its own crop model."""


def weights_dir() -> Path:
    """TotalSegmentator's weights folder, by its own rule: ``$TOTALSEG_WEIGHTS_PATH``, else
    ``$TOTALSEG_HOME_DIR/nnunet/results``, else ``~/.totalsegmentator/nnunet/results`` (``/tmp`` for a home of ``/``)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if os.environ.get("TOTALSEG_HOME_DIR"):
        return Path(os.environ["TOTALSEG_HOME_DIR"]) / "nnunet" / "results"
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    return home / ".totalsegmentator" / "nnunet" / "results"


def task_name(model: object) -> str | None:
    """The task ``-m`` names (``totalseg:total`` -> ``total``), or None for a model folder."""
    text = str(model)
    return text[len(TASK_PREFIX):] if text.startswith(TASK_PREFIX) else None


def check_task_flags(model: object, fast: bool, roi_subset: object, statistics: bool, command: str = "predict") -> None:
    """Refuse (one line) the task flags with a model folder, and a task with a command that runs one model folder
    (``command`` other than predict and batch)."""
    if task_name(model) is None:
        given = [flag for flag, on in (("--fast", fast), ("--roi_subset", roi_subset), ("--statistics", statistics))
                 if on]
        if given:
            raise ModelError(None, f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for TotalSegmentator's "
                                   f"tasks (-m {TASK_PREFIX}total), not for a model folder")
    elif command not in ("predict", "batch"):
        raise ModelError(str(model), f"tilewise {command} runs one nnU-Net model folder; run a TotalSegmentator task "
                                     f"with 'tilewise predict -m {model} --verbose' (it prints each part's seconds)")


def totalsegmentator_installed() -> bool:
    """Whether the ``totalsegmentator`` package (the ``totalseg`` extra) can be imported."""
    import importlib.util

    try:
        return importlib.util.find_spec("totalsegmentator") is not None
    except (ImportError, ValueError):
        return False


def _tables() -> Any:
    """TotalSegmentator's task and class tables (pure data modules); one line when the package is missing."""
    try:
        from totalsegmentator import map_tasks_config, map_to_binary
    except ImportError:
        raise ModelError(None, "TotalSegmentator's tasks need its package: pip install \"tilewise[totalseg]\"") from None
    return map_tasks_config, map_to_binary


@dataclass(frozen=True)
class Part:
    """One nnU-Net model of a stage: its trained-model folder and its labels (value -> TotalSegmentator's name)."""

    task_id: int
    folder: Path
    labels: dict[int, str]


@dataclass(frozen=True)
class Stage:
    """One TotalSegmentator ``nnUNet_predict_image`` call: its models, grid and labels."""

    task: str
    """TotalSegmentator's task name for this stage's class map and post-processing (``total`` for the crop model)."""
    parts: tuple[Part, ...]
    resample: tuple[float, float, float] | None
    """The spacing (x, y, z, mm) the image is resampled to before the models run; None: the image's own."""
    step: float
    folds: tuple[str, ...]
    labels: dict[int, str]
    """Output label value -> structure name (TotalSegmentator's class numbers and names)."""
    multi_part: bool = False

    def value_of(self, name: str) -> int:
        """The output value of structure ``name``."""
        return next(value for value, label in self.labels.items() if label == name)


@dataclass(frozen=True)
class TaskSpec:
    """A TotalSegmentator task resolved against the installed weights: what ``-m totalseg:<name>`` runs."""

    name: str
    fast: bool
    main: Stage
    crop: tuple[str, ...] | None = None
    """Structures of :attr:`crop_stage`'s result the image is cropped to (with :data:`CROP_MARGIN_MM`)."""
    crop_stage: Stage | None = None
    roi_subset: tuple[str, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def model_name(self) -> str:
        """The name ``-m`` takes, with ``--fast`` when it runs the fast model."""
        return f"{TASK_PREFIX}{self.name}{' --fast' if self.fast else ''}"

    @property
    def label_names(self) -> dict[int, str]:
        """Output label value -> name, background included (only the ``roi_subset`` structures when given)."""
        names = {value: name for value, name in sorted(self.main.labels.items())
                 if self.roi_subset is None or name in self.roi_subset}
        return {0: "background", **names}

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages in the order they run."""
        return (self.crop_stage, self.main) if self.crop_stage is not None else (self.main,)

    @property
    def parts_to_run(self) -> tuple[Part, ...]:
        """The main stage's parts that hold a ``roi_subset`` structure (all without one), in TotalSegmentator's
        order."""
        if self.roi_subset is None or not self.main.multi_part:
            return self.main.parts
        return tuple(p for p in self.main.parts if any(name in self.roi_subset for name in p.labels.values()))


def _config(name: str, fast: bool) -> dict[str, Any]:
    """TotalSegmentator's settings of task ``name`` (its ``get_task_config``: defaults, the mode, the task)."""
    tasks, _ = _tables()
    if name not in tasks.TASK_CONFIGS:
        close = difflib.get_close_matches(name, list(tasks.TASK_CONFIGS), n=1)
        hint = f" (did you mean '{TASK_PREFIX}{close[0]}'?)" if close else "; 'tilewise models' lists the installed ones"
        raise ModelError(f"{TASK_PREFIX}{name}", f"is not a TotalSegmentator task{hint}")
    raw = tasks.TASK_CONFIGS[name]
    config = {**tasks.DEFAULT_CONFIG, "plans": "nnUNetPlans"}  # the Python API passes plans="nnUNetPlans"
    if "sub_modes" in raw:
        mode = "fast" if fast else "default"
        if mode not in raw["sub_modes"]:
            raise ModelError(f"{TASK_PREFIX}{name}", "has no --fast model")
        config.update(raw["sub_modes"][mode])
    else:
        if fast:
            raise ModelError(f"{TASK_PREFIX}{name}", "has no --fast model; run it without --fast")
        config.update({k: v for k, v in raw.items() if k not in ("disallow_fast", "commercial", "info_msg")})
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise ModelError(f"{TASK_PREFIX}{name}", f"{what}, which Tilewise does not run yet; use TotalSegmentator")
    if name in UNSUPPORTED_TASKS:
        raise ModelError(f"{TASK_PREFIX}{name}", f"{UNSUPPORTED_TASKS[name]}, which Tilewise does not run yet; use "
                                                 "TotalSegmentator")
    return config


def dataset_folder(root: Path, task_id: int) -> Path | None:
    """The dataset folder of ``task_id`` under ``root`` (``Dataset291_*``, as nnU-Net finds it), or None."""
    if not root.is_dir():
        return None
    found = sorted(p for p in root.glob(f"Dataset{task_id:03d}_*") if p.is_dir())
    if len(found) > 1:
        raise ModelError(root, f"holds {len(found)} folders for TotalSegmentator's dataset {task_id} "
                               f"({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def model_folder(root: Path, task_id: int, trainer: str, plans: str, configuration: str) -> Path | None:
    """The trained-model folder TotalSegmentator runs for ``task_id`` (None when it is not installed)."""
    dataset = dataset_folder(root, task_id)
    folder = dataset / f"{trainer}__{plans}__{configuration}" if dataset is not None else None
    return folder if folder is not None and folder.is_dir() else None


def _weights_name(task_id: int) -> str:
    tasks, _ = _tables()
    info = tasks.TASK_ID_WEIGHTS_CONFIGS.get(task_id, {})
    return str(info.get("foldername") or f"Dataset{task_id:03d}")


def _require(root: Path, task: str, task_id: int, trainer: str, plans: str, configuration: str) -> Path:
    folder = model_folder(root, task_id, trainer, plans, configuration)
    if folder is None:
        raise ModelError(f"{TASK_PREFIX}{task}", f"needs TotalSegmentator's model {_weights_name(task_id)} "
                                                 f"({trainer}__{plans}__{configuration}) in {root}, which is not "
                                                 "installed; download it with TotalSegmentator "
                                                 "(totalseg_download_weights) or set TOTALSEG_WEIGHTS_PATH")
    return folder


def _folds(folder: Path, folds: Any) -> tuple[str, ...]:
    """The task's folds (None: every fold nnU-Net would find in ``folder``)."""
    if folds is not None:
        return tuple(str(f) for f in folds)
    return tuple(sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / "checkpoint_final.pth").is_file()))


def _spacing(resample: Any) -> tuple[float, float, float] | None:
    if resample is None:
        return None
    if isinstance(resample, (int, float)):
        return (float(resample),) * 3  # type: ignore[return-value]
    return tuple(float(r) for r in resample)  # type: ignore[return-value]


def _stage(root: Path, task: str, owner: str, task_id: Any, trainer: str, plans: str, configuration: str,
           resample: Any, folds: Any) -> Stage:
    """A stage of task ``task`` (class maps) run for ``owner`` (the task ``-m`` named, for error messages)."""
    _, maps = _tables()
    labels = {int(k): str(v) for k, v in maps.class_map[task].items()}
    step = 0.8 if task in STEP_0_8_TASKS else 0.5
    if isinstance(task_id, list):
        part_maps, id_to_part = (getattr(maps, n) for n in MULTI_PART_MAPS[task])
        parts = []
        for tid in task_id:
            folder = _require(root, owner, tid, trainer, plans, configuration)
            part_labels = {int(k): str(v) for k, v in part_maps[id_to_part[tid]].items()}
            parts.append(Part(int(tid), folder, part_labels))
        # TotalSegmentator runs a roi_subset's parts in the order of its parts table: keep that order
        order = [part_name for part_name in part_maps]
        parts.sort(key=lambda p: order.index(id_to_part[p.task_id]))
        return Stage(task, tuple(parts), _spacing(resample), step, _folds(parts[0].folder, folds), labels, True)
    folder = _require(root, owner, int(task_id), trainer, plans, configuration)
    return Stage(task, (Part(int(task_id), folder, labels),), _spacing(resample), step, _folds(folder, folds), labels)


def _crop_stage(root: Path, name: str, config: dict[str, Any], roi_subset: bool) -> Stage:
    """The rough model TotalSegmentator's Python API crops with (its choice, restated): 6 mm ``total`` (298), or
    3 mm (297) for a robust crop; 3 mm ``total_mr`` (852) for MR tasks; 6 mm ``body`` (300) to crop to the body."""
    mr_task = name.endswith("_mr")
    robust = bool(config.get("robust_crop")) or (mr_task and roi_subset)
    task_id, spacing = (852, 3.0) if mr_task else ((297, 3.0) if robust else (298, 6.0))
    crop_task = "total_mr" if mr_task or config.get("modality") == "mr" else "total"
    trainer = "nnUNetTrainer_2000epochs_NoMirroring" if mr_task else "nnUNetTrainer_4000epochs_NoMirroring"
    crop = config.get("crop")
    if crop is not None and ("body_trunc" in crop or "body_extremities" in crop):
        task_id, spacing, trainer, crop_task = 300, 6.0, "nnUNetTrainer", "body"
    return _stage(root, crop_task, name, task_id, trainer, "nnUNetPlans", "3d_fullres", spacing, [0])


def resolve_task(name: str, fast: bool = False, roi_subset: list[str] | tuple[str, ...] | None = None,
                 root: Path | None = None) -> TaskSpec:
    """Task ``name`` (with ``--fast``, ``--roi_subset``) against the weights in ``root`` (default
    :func:`weights_dir`); raises :class:`ModelError` (one line) for an unknown task, a setting Tilewise does not
    run, a structure the task does not have, or a model that is not installed."""
    root = weights_dir() if root is None else Path(root)
    config = _config(name, fast)
    _, maps = _tables()
    if roi_subset:
        if not name.startswith("total"):
            raise ModelError(f"{TASK_PREFIX}{name}", "--roi_subset works with the total and total_mr tasks only")
        known = set(maps.class_map[name].values())
        for structure in roi_subset:
            if structure not in known:
                close = difflib.get_close_matches(structure, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ModelError(f"{TASK_PREFIX}{name}", f"has no structure '{structure}'{hint}")
    main = _stage(root, name, name, config["task_id"], config["trainer"], config["plans"], config["model"],
                  config["resample"], config["folds"])
    crop = config.get("crop")
    crop_stage = None
    if crop is not None or roi_subset:
        crop_stage = _crop_stage(root, name, config, bool(roi_subset))
        crop = tuple(crop) if isinstance(crop, (list, tuple)) else (tuple(roi_subset) if roi_subset else (crop,))
        missing = [s for s in crop if s not in crop_stage.labels.values()]
        if missing:
            raise ModelError(f"{TASK_PREFIX}{name}", f"crops to {', '.join(missing)}, which its crop model "
                                                     f"({crop_stage.task}) does not segment")
    return TaskSpec(name, fast, main, tuple(crop) if crop else None, crop_stage,
                    tuple(roi_subset) if roi_subset else None)

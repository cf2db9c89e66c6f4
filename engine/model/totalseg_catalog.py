"""Which TotalSegmentator tasks the installed weights hold (``tilewise models``, the viewer's model list): tasks by the
name ``-m`` takes (``totalseg:total``), not their nnU-Net folders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .totalseg import TASK_PREFIX, dataset_folder, resolve_task, totalsegmentator_installed, weights_dir


@dataclass(frozen=True)
class TaskInfo:
    """An installed TotalSegmentator task."""

    name: str
    """As ``-m`` takes it: ``totalseg:total``."""
    structures: int
    fast: bool | None
    """Whether its ``--fast`` model is installed (None: the task has no fast model)."""
    problem: str | None
    """Why it cannot run (a crop model not installed, a setting Tilewise does not run), or None when it can."""
    folders: tuple[Path, ...]
    """The trained-model folders it runs (its own; crop models are listed with their task)."""

    def describe(self) -> str:
        """One line for a list: the structures, --fast, and what keeps it from running."""
        fast = "" if self.fast is None else f", --fast {'installed' if self.fast else 'not installed'}"
        problem = f"; cannot run: {self.problem}" if self.problem else ""
        return f"{self.structures} structures{fast}{problem}"


def _present_task_ids(root: Path, config: dict) -> list[int] | None:
    """The default mode's task ids when all their dataset folders are under ``root``, else None."""
    mode = config["sub_modes"]["default"] if "sub_modes" in config else config
    ids = mode.get("task_id")
    ids = ids if isinstance(ids, list) else [ids]
    if not ids or not all(isinstance(i, int) and dataset_folder(root, i) is not None for i in ids):
        return None
    return ids


def installed_tasks(root: Path | None = None) -> list[TaskInfo]:
    """The tasks whose models are under ``root`` (default: TotalSegmentator's weights folder), by name; empty when
    the ``totalsegmentator`` package is not installed (its folders are then listed as plain nnU-Net models)."""
    root = weights_dir() if root is None else Path(root)
    if not totalsegmentator_installed() or not root.is_dir():
        return []
    from totalsegmentator.map_tasks_config import TASK_CONFIGS
    from totalsegmentator.map_to_binary import class_map

    found = []
    for name, config in TASK_CONFIGS.items():
        ids = _present_task_ids(root, config)
        if ids is None:
            continue
        problem, folders = None, ()
        try:
            spec = resolve_task(name, root=root)
            folders = tuple(part.folder for part in spec.main.parts)
        except ModelError as error:
            problem = error.problem
        fast = None
        if "fast" in config.get("sub_modes", {}):
            try:
                resolve_task(name, fast=True, root=root)
                fast = True
            except ModelError:
                fast = False
        found.append(TaskInfo(f"{TASK_PREFIX}{name}", len(class_map.get(name, {})), fast, problem, folders))
    return found


def task_model_folders(root: Path | None = None) -> set[Path]:
    """Every trained-model folder under TotalSegmentator's weights folder that belongs to a task Tilewise lists (so
    a model list shows the task, not its folders); empty without the ``totalsegmentator`` package."""
    root = weights_dir() if root is None else Path(root)
    if not installed_tasks(root):
        return set()
    return {folder.resolve() for dataset in root.glob("Dataset*_*") if dataset.is_dir()
            for folder in dataset.iterdir() if folder.is_dir() and (folder / "plans.json").is_file()}

"""TotalSegmentator's tasks as entries of the viewer's model list: ``totalseg:total`` runs its five models as one, so
the list shows the task (by the name ``-m`` takes) and not its part folders, as ``tilewise models`` does.

A :class:`TaskModelInfo` is a :class:`~tilewise.engine.ModelInfo` (what the dock reads of any model: its channels,
label names, the folder the image is checked against) that also carries the resolved task (:class:`TaskSpec`), so a
run goes to :class:`~tilewise.engine.TaskPredictor`. What a task's result carries for the review travels in the
layer's metadata under :data:`META_TASK` and :data:`META_STATISTICS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tilewise.engine import (
    ModelError,
    ModelInfo,
    TaskInfo,
    TaskSpec,
    describe_model,
    find_models,
    installed_tasks,
    resolve_task,
    task_model_folders,
    task_name,
    totalsegmentator_installed,
    totalsegmentator_root,
)

META_TASK = "tilewise_task"
"""The task a result was made with, as ``-m`` names it ('totalseg:total --fast')."""
META_STATISTICS = "tilewise_statistics"
"""TotalSegmentator's statistics of a task's result: structure name -> {'volume': mm³, 'intensity': mean}."""
META_RUN_COUNTS = "tilewise_run_counts"
"""The voxels per label value as the task's run left them: the statistics describe the labels while the layer's
counts (which follow edits) still equal these."""
INSTALL_HINT = ("TotalSegmentator's models are installed on this computer, but not its Python package, which runs "
                "its tasks (totalseg:total and others). To run them, install it: pip install \"tilewise[totalseg]\"")


@dataclass(frozen=True)
class TaskModelInfo(ModelInfo):
    """A TotalSegmentator task as a model of the list: ``path`` is the folder of its first model (the one the image
    is checked against), ``label_names`` are TotalSegmentator's class numbers and names."""

    task: TaskInfo | None = None
    spec: TaskSpec | None = None

    @property
    def name(self) -> str:
        """As ``-m`` takes it: 'totalseg:total', with ' --fast' for the fast model."""
        return self.spec.model_name if self.spec is not None else ""

    @property
    def fast(self) -> bool:
        """Whether this runs the task's fast (3 mm) model."""
        return bool(self.spec is not None and self.spec.fast)

    @property
    def parts(self) -> int:
        """How many nnU-Net models the task runs (its crop model included)."""
        return sum(len(stage.parts) for stage in self.spec.stages) if self.spec is not None else 0

    @property
    def spacing_mm(self) -> float | None:
        """The spacing (mm) TotalSegmentator resamples the image to for the task's models (None: the image's)."""
        resample = self.spec.main.resample if self.spec is not None else None
        return max(resample) if resample else None


def fast_text(info: TaskInfo) -> str:
    """Whether ``info``'s fast model is installed, in the list's words ('' for a task without one)."""
    if info.fast is None:
        return ""
    return "fast (3 mm) model installed" if info.fast else "fast (3 mm) model not installed"


def list_text(info: TaskInfo) -> str:
    """The task's entry in the model list: 'totalseg:total · 117 structures · fast (3 mm) model installed'."""
    return " · ".join(t for t in (info.name, f"{info.structures} structures", fast_text(info)) if t)


def runnable_tasks(root: Path | None = None) -> list[TaskInfo]:
    """The installed tasks Tilewise can run (those it cannot run are left out of the list, with their reason in
    ``tilewise models``), under ``root`` (default: TotalSegmentator's weights folder)."""
    return [info for info in installed_tasks(totalsegmentator_root() if root is None else root) if not info.problem]


def task_model(info: TaskInfo, fast: bool, root: Path | None = None) -> TaskModelInfo | None:
    """Task ``info`` (with its fast model when ``fast``) as a model of the list; None when it cannot be resolved."""
    name = task_name(info.name)
    try:
        spec = resolve_task(name, fast=fast, root=totalsegmentator_root() if root is None else root)
    except ModelError:
        return None
    first = spec.parts_to_run[0].folder
    described = describe_model(first)
    channels = list(described.channels) if described is not None else ["CT"]
    labels: dict[str, object] = {label: value for value, label in spec.label_names.items()}
    configuration = first.name.rsplit("__", 1)[-1]  # Trainer__Plans__3d_fullres
    return TaskModelInfo(path=first, dataset=f"TotalSegmentator {name}", configuration=configuration, folds=[],
                         labels=labels, channels=channels, label_names=dict(spec.label_names), task=info, spec=spec)


def plain_models(roots: list[Path]) -> list[ModelInfo]:
    """The nnU-Net models under ``roots``, without the folders of TotalSegmentator's listed tasks."""
    hidden = task_model_folders(totalsegmentator_root())
    return [info for info in find_models(roots) if info.path.resolve() not in hidden]


def missing_package_hint(models: list[ModelInfo]) -> str:
    """What to install when TotalSegmentator's weights are among ``models`` but its package is missing; else ''."""
    weights = str(totalsegmentator_root())
    if totalsegmentator_installed() or not any(str(info.path).startswith(weights) for info in models):
        return ""
    return INSTALL_HINT

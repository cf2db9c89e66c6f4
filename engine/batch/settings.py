"""What one ``tilewise batch`` run is asked to do, as plain values: the command line fills it, and so can a script,
a test or a Ray driver, without argparse."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TilewiseError
from ..model.totalseg import task_name
from ..presets import Preset

UNCERTAINTY_FOR_TASKS = ("is not available for TotalSegmentator tasks (each part's map lies on its own grid); run one "
                         "of the task's nnU-Net model folders with -m FOLDER instead")


@dataclass
class BatchSettings:
    """The settings of one batch run (see ``tilewise batch --help`` for each flag)."""

    input: Path
    """The folder of cases (``-i``)."""
    output: Path
    """The output folder (``-o``)."""
    model: str
    """The model folder or name (``-m``)."""
    preset: Preset
    """The preset with the command line's overrides applied."""
    preset_name: str = "reference"
    """The preset's name as asked for, for the summary."""
    fast: bool = False
    """With a TotalSegmentator task (``-m totalseg:total``): its fast model (``--fast``)."""
    roi_subset: list[str] | None = None
    """With a TotalSegmentator task: only these structures (``--roi_subset``)."""
    step: float | None = None
    """The tile step asked for on the command line (``-step_size``), which a task's own step gives way to."""
    device: str = "auto"
    folds: list[str] | None = None
    checkpoint: str | None = None
    trust: bool = False
    """Allow checkpoints that need full unpickling (``--trust-model``)."""
    nnunet_exact: bool = False
    workers: int = 1
    num_parts: int = 1
    part_id: int = 0
    output_type: str = "same"
    seg_type: str = "binary"
    """The DICOM SEG type of a ``dicom-seg`` output (``--seg-type``): binary or labelmap."""
    save_probabilities: bool = False
    save_uncertainty: bool = False
    """Also write each case's uncertainty map (``<case>_uncertainty<ext>``) and its ``uncertain_volume_ml`` in the
    summary (``--save_uncertainty``)."""
    prev_stage_predictions: Path | None = None
    """For a cascade stage: the folder of the previous stage's segmentations (``-prev_stage_predictions``), one per
    case, used instead of running that stage."""
    series_uid: list[str] | None = None
    overwrite: bool = False
    ray: str | None = None
    """``auto`` or a cluster address to run on Ray actors; None runs in this process."""
    ray_actors: int | None = None
    strict_input: bool = False
    """Refuse (fail) a case whose image the model was not trained for, instead of noting it (``--strict-input``);
    this process's own cases follow the command line's input policy, Ray actors this setting."""
    quiet: bool = False
    verbose: bool = False
    progress_bar: bool = True
    """A progress bar when stderr is a terminal (``--disable_progress_bar`` turns it off)."""


def refuse_unsupported_uncertainty(settings: BatchSettings) -> None:
    """Before any work: one line (exit 2) for ``--save_uncertainty`` with a TotalSegmentator task or ``--ray``."""
    if not settings.save_uncertainty:
        return
    if task_name(settings.model) is not None:
        raise TilewiseError("--save_uncertainty", UNCERTAINTY_FOR_TASKS)
    if settings.ray is not None:
        raise TilewiseError("--save_uncertainty", "is not available with --ray yet (the Ray actors write labels "
                                                  "only); run the batch without --ray")

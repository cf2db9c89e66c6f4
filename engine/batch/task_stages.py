"""A TotalSegmentator task's cases through the batch pipeline (``tilewise batch -m totalseg:total``): every part of the
task loaded once (:class:`~tilewise.engine.task_predictor.TaskPredictor`) for all cases.

The stages have :class:`~.stages.CaseStages`' names and calls, so the pipeline, the records, resuming and the summary
work as for one model: ``read`` reads the image, ``sliding_window`` runs the whole task on the device thread (its
TotalSegmentator steps, every part's tiles, the merge and the way back to the input grid), ``write`` writes the labels
with TotalSegmentator's class numbers and names; ``preprocess`` and ``export`` have nothing of their own to do.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

from ..data.dicom.seg import AlgorithmInfo
from ..data.outputs import check_dicom_references, write_output
from ..data.readers import read_volume
from ..events import CancelToken, EventHandler
from ..prepared_case import PreparedCase
from ..runtime.devices import describe_device
from ..runtime.memory_plan import MemoryBudget
from ..task_predictor import TaskPredictor
from .stages import InFlight


class TaskCaseStages:
    """:class:`~.stages.CaseStages` for a task: ``predictor`` holds every model of the task."""

    with_probabilities = False
    with_uncertainty = False

    def __init__(self, predictor: TaskPredictor, budget: MemoryBudget | None,
                 series_uid: Sequence[str] | None = None, on_event: EventHandler | None = None,
                 seg_type: str = "binary") -> None:
        self.predictor = predictor
        self.budget = budget
        self.series_uid = series_uid
        self.on_event = on_event
        self.seg_type = seg_type

    def read(self, item: InFlight) -> None:
        """Read the case's image (raises for a bad case, and for a DICOM output it cannot be referenced by)."""
        started = time.perf_counter()
        volume = read_volume(list(item.case.inputs), series_uid=self.series_uid)
        item.prepared = PreparedCase(volume, plan=None, order=[])
        item.dicom_files = volume.dicom_files
        check_dicom_references(item.case.output, item.dicom_files)
        item.timings["read"] = time.perf_counter() - started

    def preprocess(self, item: InFlight, cancel: CancelToken | None) -> None:
        """Nothing: the task crops and resamples per stage, in :meth:`sliding_window`."""

    def sliding_window(self, item: InFlight, cancel: CancelToken | None) -> None:
        """The whole task on the case, on the device thread."""
        assert item.prepared is not None, "the read stage first"
        result = self.predictor.predict(item.prepared.volume, self.on_event, cancel)
        item.result = result  # type: ignore[assignment]  (a TaskResult: labels, geometry, tiles, passes, notes)
        item.timings.update(result.timings)
        item.prepared = None

    def export(self, item: InFlight, cancel: CancelToken | None) -> None:
        """Nothing: the task's labels are already on the input grid."""

    def write(self, item: InFlight) -> None:
        """Write the labels atomically, as ``tilewise predict -m totalseg:...`` does."""
        result = item.result
        assert result is not None
        started = time.perf_counter()
        write_output(result.labels, result.geometry, item.dicom_files, result.label_names,  # type: ignore[attr-defined]
                     task_algorithm(self.predictor), item.case.output, self.seg_type)
        item.timings["write"] = time.perf_counter() - started

    def run_stage(self, stage: str, item: InFlight, cancel: CancelToken | None) -> None:
        """Run one stage by its name in :data:`~.stages.STAGES` on ``item``."""
        if stage in ("read", "write"):
            getattr(self, stage)(item)
        else:
            getattr(self, stage)(item, cancel)


def task_algorithm(predictor: TaskPredictor) -> AlgorithmInfo:
    """The task, folds and preset as a DICOM output records them."""
    return AlgorithmInfo(model_name=predictor.spec.model_name, folds=tuple(predictor.settings.folds),
                         preset=predictor.preset.name)


def task_header(predictor: TaskPredictor) -> dict:
    """The summary header's fields of a loaded task: its name, models, settings, device, backend, load time."""
    settings = predictor.settings
    return {"model": predictor.spec.model_name, "models": [str(folder) for folder in predictor.model_folders],
            "folds": settings.folds, "tile_step": settings.tile_step, "precision": settings.precision,
            "batch_size": settings.batch_size, "device": str(settings.device),
            "device_name": describe_device(settings.device), "backend": predictor.backend_description,
            "nnunet_exact": predictor.nnunet_exact, "load_s": round(predictor.load_seconds, 3)}

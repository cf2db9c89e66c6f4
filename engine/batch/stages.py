"""One batch case through a loaded :class:`Predictor`, cut into stages: read -> preprocess -> sliding window ->
export -> write. Each stage is a method, so that a pipeline runs them on different threads (the device runs case k
while case k+1 is preprocessed and case k-1 written), and :func:`~.records.run_case` runs them in a row.
Nothing here is global: all state is in the :class:`CaseStages` object and the :class:`InFlight` item.

The middle stages are the predictor's own (:meth:`Predictor.plan_case`, ``preprocess_case``, ``run_tiles``,
``finish``: what :meth:`Predictor.predict` runs in a row), so a batch writes the same bytes as ``tilewise predict``,
also with ``nnunet_exact``. One difference that does not change a voxel: every case is planned against the memory
there was when the batch started, not what other cases in flight leave (the pipeline admits cases so that their
planned peaks fit together, see :mod:`.pipeline`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.cases import Case
from ..data.dicom.seg import AlgorithmInfo
from ..data.model_reader import reads_like_simpleitk
from ..data.outputs import check_dicom_references, write_output
from ..data.previous_stage import previous_stage_file, read_previous_stage
from ..data.readers import read_volume
from ..data.uncertainty_file import uncertainty_path, write_uncertainty
from ..data.writers import write_probabilities
from ..events import CancelToken, EventHandler
from ..predictor import Predictor, Result
from ..prepared_case import PreparedCase
from ..runtime.allocator import returning_large_blocks
from ..streaming_stage import writes_labels_slab_wise
from ..runtime.memory_plan import MemoryBudget


@dataclass
class InFlight:
    """A case between stages: the predictor's case, then its result, and the seconds each stage took."""

    case: Case
    prepared: PreparedCase | None = None
    result: Result | None = None
    planned_peaks: tuple[int, int] = (0, 0)
    """The planned (host, device) peak in bytes, for admission to the pipeline and release from it."""
    timings: dict[str, float] = field(default_factory=dict)
    dicom_files: tuple[Path, ...] = ()
    """The case's DICOM files (empty for other inputs), kept past the export for a DICOM SEG or RTSTRUCT output."""


class CaseStages:
    """The predictor's stages and ``tilewise predict``'s reading and writing, one stage per method.

    ``budget`` is the memory every case is planned against (None: the memory available when the case is read, as
    ``tilewise predict`` plans); ``with_probabilities`` also writes nnU-Net's .npz/.pkl; ``series_uid`` chooses the
    DICOM series of each DICOM case (see :func:`~..data.readers.read_volume`); ``on_event`` gets the sliding
    window's tile events; ``seg_type`` is the type of a DICOM SEG output ('binary' or 'labelmap');
    ``prev_stage_predictions``, for a cascade stage, the folder of each case's previous-stage segmentation
    (:mod:`~..data.previous_stage`: named as nnU-Net names it), read with the case; ``with_uncertainty`` also writes
    the uncertainty map (:mod:`~..data.uncertainty_file`).
    The sliding-window stage uses the predictor's device and backend: call it from one thread at a time. The other
    stages may run on other threads at the same time, for other cases.
    """

    def __init__(self, predictor: Predictor, budget: MemoryBudget | None, with_probabilities: bool = False,
                 series_uid: Sequence[str] | None = None, on_event: EventHandler | None = None,
                 seg_type: str = "binary", prev_stage_predictions: Path | None = None,
                 with_uncertainty: bool = False) -> None:
        self.predictor = predictor
        self.budget = budget
        self.with_probabilities = with_probabilities
        self.series_uid = series_uid
        self.on_event = on_event
        self.seg_type = seg_type
        self.prev_stage_predictions = prev_stage_predictions
        self.with_uncertainty = with_uncertainty

    def read(self, item: InFlight) -> None:
        """Read the case's files, check them against the model and plan its memory (raises for a bad case)."""
        started = time.perf_counter()
        with returning_large_blocks():  # the file's voxels and their float32 copy are made once
            volume = read_volume(list(item.case.inputs), series_uid=self.series_uid)
        previous = None
        if self.prev_stage_predictions is not None:
            ending = str(self.predictor.bundle.dataset_json.get("file_ending", ".nii.gz"))
            path = previous_stage_file(self.prev_stage_predictions, item.case.name, ending)
            previous = read_previous_stage(path, volume)
        item.prepared = self.predictor.plan_case(volume, self.budget, previous_labels=previous,
                                                 with_probabilities=self.with_probabilities,  # may stream
                                                 with_uncertainty=self.with_uncertainty)
        item.planned_peaks = item.prepared.planned_peaks
        if writes_labels_slab_wise(self.predictor.bundle, reads_like_simpleitk(self.predictor.reader), item.prepared,
                                   item.case.output):  # the labels go to their file as the export makes them
            item.prepared.labels_path = item.case.output
        item.dicom_files = item.prepared.volume.dicom_files
        check_dicom_references(item.case.output, item.dicom_files)  # a case that cannot be written fails first
        item.timings["read"] = time.perf_counter() - started

    def preprocess(self, item: InFlight, cancel: CancelToken | None) -> None:
        """nnU-Net's preprocessing onto the network grid (and the body mask when empty tiles are skipped)."""
        item.timings.update(self.predictor.preprocess_case(self._prepared(item), cancel).timings)

    def sliding_window(self, item: InFlight, cancel: CancelToken | None) -> None:
        """Every tile through the model on the device; the logits stay on the case."""
        prepared = self._prepared(item)
        self.predictor.run_tiles(prepared, self.on_event, cancel)
        item.timings.update(prepared.timings)

    def export(self, item: InFlight, cancel: CancelToken | None) -> None:
        """The logits as labels (and probabilities, and the uncertainty map) on the input grid, slab by slab, into
        ``item.result``."""
        prepared = self._prepared(item)
        item.result = self.predictor.finish(prepared, cancel, self.with_probabilities, self.with_uncertainty)
        item.timings.update(prepared.timings)
        item.prepared = None  # the volume and the logits are done

    def write(self, item: InFlight) -> None:
        """Write the labels (and nnU-Net's probability files, and the uncertainty map) as ``tilewise predict`` does,
        each file atomically."""
        assert item.result is not None
        started = time.perf_counter()
        if item.result.labels is not None:  # else the export wrote and published the label file slab by slab
            write_output(item.result.labels, item.result.geometry, item.dicom_files, self.predictor.bundle.label_names,
                         algorithm_of(self.predictor), item.case.output, self.seg_type)
        if self.with_probabilities and item.result.probabilities is not None:
            write_probabilities(item.result.probabilities, item.result.properties, item.case.output_truncated)
        if self.with_uncertainty and item.result.uncertainty is not None:
            write_uncertainty(item.result.uncertainty, item.result.geometry, uncertainty_path(item.case))
        item.timings["write"] = time.perf_counter() - started

    def run_stage(self, stage: str, item: InFlight, cancel: CancelToken | None) -> None:
        """Run one stage by its name in :data:`STAGES` on ``item``."""
        if stage in ("read", "write"):
            getattr(self, stage)(item)
        else:
            getattr(self, stage)(item, cancel)

    @staticmethod
    def _prepared(item: InFlight) -> PreparedCase:
        assert item.prepared is not None, "the read stage first"
        return item.prepared


STAGES: tuple[str, ...] = ("read", "preprocess", "sliding_window", "export", "write")


def run_in_row(stages: CaseStages, case: Case, cancel: CancelToken | None = None) -> InFlight:
    """Every stage of ``case`` in a row on this thread (what ``tilewise predict`` does per case); raises the first
    stage's error. The finished item keeps the result and the seconds each stage took."""
    item = InFlight(case)
    for name in STAGES:
        stages.run_stage(name, item, cancel)
    return item


def algorithm_of(predictor: Predictor) -> AlgorithmInfo:
    """The model, folds and preset of ``predictor`` as a DICOM output records them."""
    bundle = predictor.bundle
    return AlgorithmInfo(model_name=f"{bundle.dataset_name} {bundle.configuration_name}",
                         folds=tuple(str(f) for f in predictor.settings.folds), preset=predictor.preset.name)

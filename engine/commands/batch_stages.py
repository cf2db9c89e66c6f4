"""One batch case through a loaded :class:`Predictor`, cut into stages: read -> preprocess -> sliding window ->
export -> write. Each stage is a method, so that a pipeline runs them on different threads (the device runs case k
while case k+1 is preprocessed and case k-1 written), and :func:`run_case` runs them in a row (a Ray actor, a
retry). Nothing here is global: all state is in the :class:`CaseStages` object and the :class:`InFlight` item.

The stages compute exactly what :meth:`Predictor.predict` computes (same calls, same order, same memory plan), so
a batch writes the same bytes as ``tilewise predict``. Differences that do not change a voxel: the body mask for tile
skipping is made in the preprocessing stage (CPU work, off the device thread), and every case is planned against
the memory there was when the batch started, not what other cases in flight leave (the pipeline admits cases so
that their planned peaks fit together, see :mod:`.batch_pipeline`). With ``nnunet_exact``, nnU-Net's own code runs
preprocessing, sliding window and export as one step on the device stage; only reading and writing overlap then.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..data.cases import Case
from ..data.model_reader import (
    labels_in_volume_order,
    read_as_model,
    reads_like_simpleitk,
)
from ..data.readers import read_volume
from ..data.volume import Volume
from ..data.writers import write_labels, write_probabilities
from ..errors import OutOfMemoryError
from ..events import CancelToken, cancellable, check_cancelled
from ..postprocess.export import export_logits
from ..postprocess.labels import logits_to_labels
from ..predictor import Predictor, Result
from ..preprocess.body_mask import body_mask
from ..preprocess.grid_shape import job_size
from ..preprocess.pipeline import Preprocessed, preprocess
from ..runtime.memory import (
    device_available_bytes,
    free_device_memory,
    host_available_bytes,
    is_out_of_memory,
)
from ..runtime.memory_plan import MemoryPlan, plan_memory
from ..sliding.accumulators import Placement, placements
from ..sliding.plan import Tile
from ..sliding.runner import SlidingWindowRunner, background_logits


@dataclass(frozen=True)
class MemoryBudget:
    """The memory a batch plans every case against: what was available when it started (after loading the model)."""

    host_bytes: int
    device_bytes: int

    @classmethod
    def available_now(cls, device: torch.device) -> MemoryBudget:
        """The host's and ``device``'s available memory at this moment."""
        return cls(host_available_bytes(), device_available_bytes(device))


@dataclass
class InFlight:
    """A case between stages: what the next stage needs, and the seconds each stage took."""

    case: Case
    volume: Volume | None = None
    plan: MemoryPlan | None = None
    order: list[Placement] = field(default_factory=list)
    prepared: Preprocessed | None = None
    skip_tile: Callable[[Tile], bool] | None = None
    logits: torch.Tensor | None = None
    runner: SlidingWindowRunner | None = None
    result: Result | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def planned_peaks(self) -> tuple[int, int]:
        """The planned (host, device) peak of this case in bytes, for admission to the pipeline ((0, 0) unplanned)."""
        if self.plan is None:
            return 0, 0
        return self.plan.peak_host_bytes, self.plan.peak_device_bytes


class CaseStages:
    """:meth:`Predictor.predict` and ``tilewise predict``'s writing, one stage per method, for one loaded predictor.

    ``budget`` is the memory every case is planned against; ``with_probabilities`` also writes nnU-Net's .npz/.pkl.
    The sliding-window stage uses the predictor's device and backend: call it from one thread at a time. The other
    stages may run on other threads at the same time, for other cases.
    """

    def __init__(self, predictor: Predictor, budget: MemoryBudget, with_probabilities: bool = False) -> None:
        self.predictor = predictor
        self.budget = budget
        self.with_probabilities = with_probabilities

    def read(self, item: InFlight) -> None:
        """Read the case's files, check them against the model and plan its memory (raises for a bad case)."""
        started = time.perf_counter()
        volume = read_volume(list(item.case.inputs))
        self.predictor.check_input(volume)
        item.volume = volume
        if not self.predictor.nnunet_exact:
            item.order = placements(self.predictor.device)
            item.plan = self._plan(volume, item.order)
        item.timings["read"] = time.perf_counter() - started

    def _plan(self, volume: Volume, order: list[Placement]) -> MemoryPlan:
        job = job_size(self.predictor.bundle, volume, self.predictor.settings.batch_size)
        pairs = [(p.device, p.dtype) for p in order]
        return plan_memory(job, self.predictor.device, pairs, self.budget.host_bytes, self.budget.device_bytes)

    def preprocess(self, item: InFlight, cancel: CancelToken | None) -> None:
        """nnU-Net's preprocessing onto the network grid (and the body mask when empty tiles are skipped)."""
        if self.predictor.nnunet_exact:
            return
        assert item.volume is not None
        predictor, settings = self.predictor, self.predictor.settings
        started = time.perf_counter()
        with cancellable(cancel):  # preprocessing stops between slabs
            check_cancelled()
            as_read = None if reads_like_simpleitk(predictor.reader) else read_as_model(item.volume, predictor.reader)
            prepared = preprocess(item.volume, predictor.bundle, with_nonzero_mask=settings.skip_empty_tiles,
                                  as_read=as_read)
            check_cancelled()
            if settings.skip_empty_tiles and prepared.nonzero is not None:
                mask = body_mask(prepared.data, prepared.nonzero)
                item.skip_tile = lambda tile: not mask.touches(tile.box)
        item.prepared = prepared
        item.timings["preprocess"] = time.perf_counter() - started

    def sliding_window(self, item: InFlight, cancel: CancelToken | None) -> None:
        """Every tile through the model on the device (with ``nnunet_exact``: nnU-Net's whole prediction)."""
        predictor, settings = self.predictor, self.predictor.settings
        started = time.perf_counter()
        if predictor.nnunet_exact:
            assert item.volume is not None
            item.result = predictor.predict(item.volume, cancel=cancel, with_probabilities=self.with_probabilities)
            item.timings.update({k: v for k, v in item.result.timings.items() if k != "load"})
            return
        assert item.prepared is not None and item.plan is not None
        bundle = predictor.bundle
        heads = bundle.label_manager.num_segmentation_heads
        runner = SlidingWindowRunner(
            predictor.backend, bundle.patch_size, settings.tile_step, settings.batch_size, heads,
            lambda logits: logits_to_labels(logits, bundle),
            background=background_logits(heads, bundle.label_manager.has_regions), skip_tile=item.skip_tile,
            placement_order=item.order[item.plan.placement_index:],
        )
        try:
            item.logits = runner.run(item.prepared.data, item.prepared.mapper, None, cancel, False)
        finally:
            if runner.batch_size != settings.batch_size:  # the batch that fitted, for the next cases
                predictor.settings = replace(settings, batch_size=runner.batch_size)
        item.runner, item.skip_tile = runner, None
        item.prepared = replace(item.prepared, data=torch.empty(0), nonzero=None)  # the network-grid input is done
        item.timings["sliding_window"] = time.perf_counter() - started

    def export(self, item: InFlight, cancel: CancelToken | None) -> None:
        """The logits as labels (and probabilities) on the input grid, slab by slab, into ``item.result``."""
        if self.predictor.nnunet_exact:
            return
        assert item.logits is not None and item.prepared is not None and item.plan is not None
        assert item.runner is not None and item.volume is not None
        predictor, prepared, runner = self.predictor, item.prepared, item.runner
        started = time.perf_counter()
        logits = item.logits[(slice(None), *prepared.unpadded)]
        item.logits = None
        try:
            exported = export_logits(logits, predictor.bundle, prepared.properties, self.with_probabilities,
                                     item.plan.slab_bytes, cancel)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            free_device_memory(predictor.device)
            if logits.device.type == "cpu":
                raise OutOfMemoryError("export", "out of memory while writing labels on the input grid; close other "
                                                 "programs or use a machine with more memory") from None
            runner.notes.append("device memory ran out during export: resampled on the host instead")
            exported = export_logits(logits.cpu(), predictor.bundle, prepared.properties, self.with_probabilities,
                                     item.plan.slab_bytes, cancel)
        del logits
        free_device_memory(predictor.device)
        labels = exported.labels
        if not reads_like_simpleitk(predictor.reader):  # back from the model reader's voxel order to the volume's
            labels = labels_in_volume_order(labels, prepared.properties, predictor.reader, item.volume.shape)
        item.timings["export"] = time.perf_counter() - started
        item.result = Result(labels=labels, geometry=item.volume.geometry, probabilities=exported.probabilities,
                             properties=prepared.properties, timings=dict(item.timings), tiles=runner.tiles_run,
                             forward_passes=runner.tiles_run * runner.passes_per_tile,
                             tiles_skipped=runner.tiles_skipped, notes=item.plan.notes + list(runner.notes))
        item.prepared = item.runner = None

    def write(self, item: InFlight) -> None:
        """Write the labels (and nnU-Net's probability files) as ``tilewise predict`` does, each file atomically."""
        assert item.result is not None
        started = time.perf_counter()
        write_labels(item.result.labels, item.result.geometry, item.case.output)
        if self.with_probabilities and item.result.probabilities is not None:
            write_probabilities(item.result.probabilities, item.result.properties, item.case.output_truncated)
        item.timings["write"] = time.perf_counter() - started
        item.volume = None

    def run_all(self, item: InFlight, cancel: CancelToken | None) -> None:
        """Every stage in a row (no overlap): read, preprocess, sliding window, export, write."""
        for stage in STAGES:
            self.run_stage(stage, item, cancel)

    def run_stage(self, stage: str, item: InFlight, cancel: CancelToken | None) -> None:
        """Run one stage by its name in :data:`STAGES` on ``item``."""
        if stage in ("read", "write"):
            getattr(self, stage)(item)
        else:
            getattr(self, stage)(item, cancel)


STAGES: tuple[str, ...] = ("read", "preprocess", "sliding_window", "export", "write")

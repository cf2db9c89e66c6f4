"""A TotalSegmentator task (``-m totalseg:total``) as one model: its nnU-Net models loaded once, each run through
Tilewise's :class:`~tilewise.engine.Predictor`, between TotalSegmentator's own steps.

One :meth:`TaskPredictor.predict` does what TotalSegmentator's Python API does for a multi-label result:

1. a crop stage when the task crops (a sub-task, or ``--roi_subset``): its rough model's labels on the input grid, and
   the mask of the structures to crop to;
2. the task's stage: the image cropped (with TotalSegmentator's 20 mm margin), reoriented and resampled by
   TotalSegmentator's functions (:mod:`~tilewise.engine.preprocess.totalseg_grid`), each part's model through the
   engine (parts whose plans preprocess alike share one preprocessed image), the parts merged into TotalSegmentator's
   class numbers (a later part's nonzero voxels win, as in its merge), its post-processing for the task, and the
   labels taken back to the input grid;
3. only the ``--roi_subset`` structures kept, and optionally TotalSegmentator's statistics (volume and mean intensity
   per structure, computed by its own ``get_basic_statistics``; on the resampled image with ``--fast``, as it does).

All parts report into one stream of :class:`~tilewise.engine.TileEvent` (``done`` counts every part's tiles; ``total``
grows when the task's stage starts after a crop stage, and part by part when the models are loaded one at a time) and
one cancel token stops any of them.
"""
from __future__ import annotations

import functools
import gc
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import release_working_memory
from .data.volume import Geometry, Volume
from .events import CancelToken, EventHandler, TileEvent, cancellable, check_cancelled
from .model.totalseg import CROP_MARGIN_MM, Stage, TaskSpec
from .predictor import Predictor
from .prepared_case import PreparedCase
from .preprocess.reuse import PreprocessCache
from .preprocess.totalseg_grid import TaskGrid, from_task_grid, model_input, nifti_of, to_task_grid
from .presets import Preset
from .runtime.allocator import return_freed_host_memory


@dataclass
class TaskResult:
    """A task's labels on the input grid (z, y, x) with TotalSegmentator's class numbers, and what the run cost."""

    labels: np.ndarray
    geometry: Geometry
    label_names: dict[int, str]
    statistics: dict[str, dict[str, float]] | None
    """TotalSegmentator's statistics (structure -> volume in mm³, mean intensity), when asked for."""
    timings: dict[str, float]
    """Seconds per stage and part: ``<stage>:grid`` (crop, reorient, resample), ``<stage>:<dataset>`` (the part's
    preprocessing, tiles and export), ``<stage>:back`` (merge, post-processing, back to the input grid)."""
    tiles: int = 0
    forward_passes: int = 0
    notes: list[str] = field(default_factory=list)
    grids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """The (z, y, x) shape of the image each stage's models ran on (``crop``, the task's name): cropped and
    resampled as TotalSegmentator crops and resamples."""


class _Events:
    """Every part's tile events as one run: ``done`` counts on over the parts, ``total`` is every prepared part's
    tiles; the boxes and provisional labels of a part's grid are left out (they are not the input's)."""

    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event
        self.done = 0
        self.total = 0

    def for_part(self) -> EventHandler | None:
        if self.on_event is None:
            return None
        before, forward = self.done, self.on_event

        def relay(event: TileEvent) -> None:
            done = before + event.done
            rate = event.elapsed_s / max(event.done, 1)
            forward(TileEvent(done=done, total=self.total, tile_index=event.tile_index,
                              network_box=event.network_box, input_box=None, labels=None,
                              elapsed_s=event.elapsed_s, eta_s=rate * (self.total - done)))

        return relay


class TaskPredictor:
    """Loads the models of a TotalSegmentator task (``spec``: :func:`~tilewise.engine.model.totalseg.resolve_task`)
    and predicts volumes with it; ``preset`` sets the engine's speed settings, with the task's tile step (unless
    ``step`` is given) and without mirroring (TotalSegmentator runs none); ``folds`` overrides the task's.
    ``nnunet_exact`` runs each model as nnU-Net does (:class:`~tilewise.engine.Predictor`'s option): stock
    TotalSegmentator's numbers, float16 sums included.

    By default every model is loaded once, here, for all the volumes to come (a batch, the viewer). With
    ``one_model_at_a_time`` (one volume: ``tilewise predict`` on a single case) only the task's first model is loaded
    here and each part's model is loaded when its part runs and let go after it, as TotalSegmentator does: the peak
    memory is one model's, not all of theirs (``total``: five). The events' ``total`` then grows part by part.
    """

    def __init__(self, spec: TaskSpec, preset: Preset, device: str = "auto", folds: list[str] | None = None,
                 step: float | None = None, trust: bool = False, nnunet_exact: bool = False,
                 cancel: CancelToken | None = None, one_model_at_a_time: bool = False) -> None:
        started = time.perf_counter()
        self.spec = spec
        self.preset = preset
        self.one_model_at_a_time = one_model_at_a_time
        self._loaders: dict[Path, Callable[[], Predictor]] = {}
        """Each part's model folder -> what loads its Predictor (in the order the parts run)."""
        for stage in spec.stages:
            stage_preset = preset.with_overrides(tile_step=step or stage.step, mirroring=False)
            for part in stage.parts if stage is not spec.main else spec.parts_to_run:
                self._loaders.setdefault(part.folder, functools.partial(
                    Predictor, part.folder, stage_preset, device, folds or list(stage.folds), trust=trust,
                    nnunet_exact=nnunet_exact))
        self.predictors: dict[Path, Predictor] = {}
        """The models loaded now."""
        with cancellable(cancel):
            first = self._loaded(spec.parts_to_run[0].folder)
            for folder in ([] if one_model_at_a_time else self._loaders):
                self._loaded(folder)
        for predictor in self.predictors.values():  # the parts run one at a time: none keeps buffers meanwhile
            release_working_memory(predictor.backend)
        self.device = first.device
        """The device the task's models run on."""
        self.settings = first.settings
        """The main stage's first model's settings (they stand for the task's)."""
        self.backend_description = first.backend.describe()
        self.nnunet_exact = first.nnunet_exact
        self.load_seconds = time.perf_counter() - started

    @property
    def model_folders(self) -> list[Path]:
        """Every model folder of the task, in the order the parts run."""
        return list(self._loaders)

    def _loaded(self, folder: Path) -> Predictor:
        """The part's model, loaded now if it is not (under the current cancel token)."""
        if folder not in self.predictors:
            check_cancelled()
            self.predictors[folder] = self._loaders[folder]()
        return self.predictors[folder]

    def _let_go(self, folder: Path) -> None:
        """Unload a part's model after its part (``one_model_at_a_time``), its memory handed back to the system."""
        del self.predictors[folder]  # its working buffers went at the end of its part (_run_part)
        gc.collect()  # the networks' reference cycles, so that their memory goes now
        return_freed_host_memory()

    def predict(self, volume: Volume, on_event: EventHandler | None = None, cancel: CancelToken | None = None,
                statistics: bool = False) -> TaskResult:
        """Segment ``volume`` (one channel); raises :class:`~tilewise.engine.Cancelled` once ``cancel`` is set."""
        with cancellable(cancel):
            return self._predict(volume, _Events(on_event), statistics)

    def _predict(self, volume: Volume, events: _Events, statistics: bool) -> TaskResult:
        spec = self.spec
        original = nifti_of(volume)
        result = TaskResult(np.zeros(0, np.uint8), volume.geometry, spec.label_names, None, {})
        crop_mask = None
        if spec.crop_stage is not None:
            import nibabel as nib

            rough, _ = self._run_stage(spec.crop_stage, spec.crop_stage.parts, original, None, events, result, False)
            values = [spec.crop_stage.value_of(name) for name in spec.crop or ()]
            crop_mask = nib.Nifti1Image(np.isin(rough, values).astype(np.uint8), original.affine)
        labels, fast_stats = self._run_stage(spec.main, spec.parts_to_run, original, crop_mask, events, result,
                                             statistics and spec.fast)
        if spec.roi_subset is not None:
            labels *= np.isin(labels, list(spec.label_names)).astype(np.uint8)
        if statistics:
            result.statistics = fast_stats if spec.fast else self._statistics(labels, original)
        result.labels = np.ascontiguousarray(labels.transpose(2, 1, 0))
        return result

    def _run_stage(self, stage: Stage, parts: tuple, original: Any, crop_mask: Any, events: _Events,
                   result: TaskResult, statistics: bool) -> tuple[np.ndarray, dict | None]:
        """One stage on the input grid (x, y, z labels) and, with ``statistics``, TotalSegmentator's statistics on
        its resampled grid (what ``--fast`` reports)."""
        started = time.perf_counter()
        grid = to_task_grid(original, stage.resample, crop_mask, CROP_MARGIN_MM if crop_mask is not None else None)
        check_cancelled()
        name = self._name(stage)
        result.timings[f"{name}:grid"] = time.perf_counter() - started
        if grid is None:  # nothing to crop to: TotalSegmentator returns an empty segmentation
            result.notes.append(f"the crop model found none of {', '.join(self.spec.crop or ())}: empty result")
            return np.zeros(original.shape[:3], np.uint8), ({} if statistics else None)
        with tempfile.TemporaryDirectory(prefix="tilewise-totalseg-") as folder:
            volume = model_input(grid.image, Path(folder))
            result.grids[name] = volume.shape
            merged = self._run_parts(stage, parts, volume, events, result)
        started = time.perf_counter()
        roi = list(self.spec.roi_subset) if self.spec.roi_subset is not None and stage is self.spec.main else None
        labels, stats = self._back(stage, merged, grid, original, roi if statistics else False)
        result.timings[f"{name}:back"] = time.perf_counter() - started
        return labels, stats

    def _run_parts(self, stage: Stage, parts: tuple, volume: Volume, events: _Events,
                   result: TaskResult) -> np.ndarray:
        """Every part on the stage's image, merged (x, y, z) in TotalSegmentator's class numbers."""
        shared = PreprocessCache()  # parts whose plans preprocess alike take the same network-grid image
        merged = np.zeros(volume.shape[::-1], np.uint8)
        if self.one_model_at_a_time:
            for index, part in enumerate(parts):
                self._run_part(stage, part, self._prepare(stage, index, part, volume, shared, events, result),
                               events, merged, result)
                self._let_go(part.folder)
            return merged
        prepared = [self._prepare(stage, index, part, volume, shared, events, result)
                    for index, part in enumerate(parts)]  # every part's tiles counted before the first runs
        for part, case in zip(parts, prepared):
            self._run_part(stage, part, case, events, merged, result)
        return merged

    def _prepare(self, stage: Stage, index: int, part: Any, volume: Volume, shared: PreprocessCache,
                 events: _Events, result: TaskResult) -> PreparedCase:
        """A part's case planned and preprocessed (its model loaded first where it is not), its tiles counted."""
        started = time.perf_counter()
        predictor = self._loaded(part.folder)
        case = predictor.preprocess_case(predictor.plan_case(volume, assess=index == 0, with_probabilities=False),
                                         reuse=shared)  # labels only: each part may stream (a window of sums)
        events.total += case.tiles_to_run(predictor.bundle.patch_size, predictor.settings.tile_step)
        result.timings[f"{self._name(stage)}:{part.folder.parent.name}"] = time.perf_counter() - started
        return case

    def _run_part(self, stage: Stage, part: Any, case: PreparedCase, events: _Events, merged: np.ndarray,
                  result: TaskResult) -> None:
        """A prepared part's tiles and export, its labels merged into ``merged`` in TotalSegmentator's numbers."""
        started = time.perf_counter()
        predictor = self.predictors[part.folder]
        predictor.run_tiles(case, events.for_part())
        events.done += case.tiles
        done = predictor.finish(case)
        release_working_memory(predictor.backend)  # the next part's model allocates its own
        return_freed_host_memory()  # and the heap gives those pages back, not only keeps them for reuse
        result.tiles += done.tiles
        result.forward_passes += done.forward_passes
        result.notes += [n for n in done.notes if n not in result.notes]
        seg = done.labels.transpose(2, 1, 0)  # SimpleITK's (z, y, x) -> nibabel's (x, y, z)
        if stage.multi_part:
            lookup = np.zeros(max(max(part.labels), int(seg.max())) + 1, np.uint8)
            for value, name in part.labels.items():
                lookup[value] = stage.value_of(name)
            seg = lookup[seg]
        np.copyto(merged, seg.astype(np.uint8), where=seg != 0)  # a later part wins where it found something
        result.timings[f"{self._name(stage)}:{part.folder.parent.name}"] += time.perf_counter() - started
        check_cancelled()

    def _name(self, stage: Stage) -> str:
        """The stage's name in timings: ``crop`` for the crop stage, else the task's."""
        return "crop" if stage is self.spec.crop_stage else self.spec.name

    @staticmethod
    def _back(stage: Stage, merged: np.ndarray, grid: TaskGrid, original: Any,
              statistics: list[str] | None | bool) -> tuple[np.ndarray, dict | None]:
        """TotalSegmentator's post-processing of the stage's task on its grid, its statistics there (``--fast``;
        ``statistics`` is False for none, else the roi_subset or None), then the labels on the input grid."""
        import nibabel as nib

        predicted = postprocess(stage.task, nib.Nifti1Image(merged, grid.image.affine))
        stats = None
        if statistics is not False:
            from totalsegmentator.statistics import get_basic_statistics

            stats = get_basic_statistics(predicted.get_fdata(), grid.image, None, True, stage.task, True,
                                         statistics)
        return from_task_grid(np.asarray(predicted.dataobj).astype(np.uint8), grid, original, stage.resample), stats

    def _statistics(self, labels: np.ndarray, original: Any) -> dict:
        """TotalSegmentator's statistics of ``labels`` (x, y, z) on the input image."""
        from totalsegmentator.statistics import get_basic_statistics

        roi = list(self.spec.roi_subset) if self.spec.roi_subset is not None else None
        return get_basic_statistics(labels, original, None, True, self.spec.name, True, roi)


def postprocess(task: str, image: Any) -> Any:
    """TotalSegmentator's post-processing of a stage's labels for ``task`` (its functions, as its
    ``nnUNet_predict_image`` applies them on the stage's grid): auxiliary labels removed; for ``body`` the largest
    trunk and no small extremity blobs; for ``vertebrae_pp`` its vertebra clean-up."""
    import nibabel as nib
    from totalsegmentator.map_to_binary import class_map
    from totalsegmentator.postprocessing import (
        keep_largest_blob_multilabel,
        postprocess_vertebrae_pp,
        remove_auxiliary_labels,
        remove_small_blobs_multilabel,
    )

    image = remove_auxiliary_labels(image, task)
    zooms = image.header.get_zooms()
    voxel_volume = float(np.prod(zooms))
    if task == "body":
        data = keep_largest_blob_multilabel(image.get_fdata().astype(np.uint8), class_map[task], ["body_trunc"],
                                            debug=False, quiet=True)
        data = remove_small_blobs_multilabel(data, class_map[task], ["body_extremities"],
                                             interval=[50000 / voxel_volume, 1e10], debug=False, quiet=True)
        image = nib.Nifti1Image(data, image.affine)
    if task == "vertebrae_pp":
        data = postprocess_vertebrae_pp(image.get_fdata().astype(np.uint8), class_map[task],
                                        voxel_volume=voxel_volume, voxel_spacing=zooms, verbose=False)
        image = nib.Nifti1Image(data, image.affine)
    return image

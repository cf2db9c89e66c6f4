"""One model, one preset, one device: preprocess -> sliding window -> export, with per-stage timings; each stage is
a public method (see :mod:`~tilewise.engine.prepared_case`), :meth:`Predictor.predict` runs them in a row."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .backends.select import choose_backend, create_backend
from .data.model_reader import labels_in_volume_order, read_as_model, reader_name, reads_like_simpleitk
from .data.volume import Volume
from .errors import InputError, TilewiseError
from .events import CancelToken, EventHandler, FocusToken, cancellable, check_cancelled, counted_events
from .export_stage import export_case
from .load_progress import LoadHandler, LoadReporter, load_bundle
from .model.cascade import check_pair, previous_stage_dir
from .model.suitability import apply_policy, check_image
from .nnunet_exact import run_like_nnunet
from .postprocess.labels import logits_to_labels
from .prepared_case import PreparedCase
from .preprocess.cascade_input import check_previous_labels, previous_stage_input
from .preprocess.grid_shape import forward_activation_bytes, job_size
from .preprocess.pipeline import Preprocessed, preprocess
from .preprocess.reuse import PreprocessCache, preprocess_key
from .presets import Preset
from .result import Result, RunSettings
from .runtime.allocator import return_freed_host_memory, returning_large_blocks
from .runtime.devices import default_batch_size
from .runtime.memory import record_peak
from .runtime.memory_plan import MemoryBudget, MemoryPlan, Streaming, check_forward_fits, plan_memory
from .sliding.accumulators import Placement, placements
from .sliding.empty_tiles import empty_tile_test
from .sliding.runner import SlidingResult, SlidingWindowRunner, background_logits
from .streaming_stage import run_streaming, streaming_mode, with_window


class Predictor:
    """Loads a model once and predicts volumes with it.

    ``folds`` overrides the preset's choice; ``trust`` allows checkpoints that need full unpickling.
    ``cancel`` stops loading (raising :class:`~tilewise.engine.Cancelled`) between folds' checkpoints and
    conversions; ``on_load`` hears each fold's loading and OpenVINO conversion (:class:`~.events.LoadEvent`, in
    fold order, on the loading thread). ``nnunet_exact`` reproduces ``nnUNetv2_predict_from_modelfolder``'s output
    voxel for voxel (see :mod:`~tilewise.engine.nnunet_exact`): PyTorch, batch 1, nnU-Net's precision, tile order,
    float16 sums, preprocessing and export; the preset's folds, mirroring and tile step still apply.

    :meth:`predict` is the public stages in a row: :meth:`prepare` (:meth:`plan_case`, :meth:`preprocess_case`),
    :meth:`run_tiles` and :meth:`finish`; ``tilewise batch`` runs them on different threads for different cases.

    A ``3d_cascade_fullres`` folder runs as nnU-Net's two-step prediction in one: :attr:`previous` is a predictor of
    its ``3d_lowres`` sibling folder (same preset, device, folds and exactness), whose stages run inside this one's
    (its preprocessing in :meth:`preprocess_case`; its tiles, export and the stacking of its segmentation onto the
    full-res input in :meth:`run_tiles`), with one tile count for both stages' events. With ``run_previous_stage``
    False the sibling is neither needed nor loaded: each case then brings the previous stage's segmentation
    (``previous_labels``, as nnU-Net's ``-prev_stage_predictions`` does).
    """

    def __init__(
        self,
        model_dir: Path | str,
        preset: Preset,
        device: str | torch.device = "auto",
        folds: list[str] | None = None,
        checkpoint_name: str | None = None,
        trust: bool = False,
        nnunet_exact: bool = False,
        cancel: CancelToken | None = None,
        run_previous_stage: bool = True,
        streaming: bool = True,
        on_load: LoadHandler | None = None,
    ) -> None:
        self.streaming = streaming
        """Whether cases may run streaming (see :meth:`plan_case`): True, wherever a window fits and the run allows it
        (:func:`~.streaming_stage.streaming_mode`); False, always the whole-volume sums."""
        self._load_reporter = LoadReporter(on_load)
        with cancellable(cancel), returning_large_blocks():  # stops between folds; its copies made once
            self._load(model_dir, preset, device, folds, checkpoint_name, trust, nnunet_exact, run_previous_stage)

    def _load(self, model_dir: Path | str, preset: Preset, device: str | torch.device, folds: list[str] | None,
              checkpoint_name: str | None, trust: bool, nnunet_exact: bool, run_previous_stage: bool) -> None:
        started = time.perf_counter()
        requested_preset = preset
        self.nnunet_exact = nnunet_exact
        if nnunet_exact:
            if preset.backend == "openvino":
                raise TilewiseError("--nnunet-exact", "runs nnU-Net's PyTorch forward passes; drop --backend openvino")
            preset = preset.with_overrides(backend="torch", batch_size=1, skip_empty_tiles=False, precision="fp32")
        choice = choose_backend(preset.backend, device)
        if nnunet_exact and choice.device.type == "cuda":
            preset = preset.with_overrides(precision="fp16")  # nnU-Net runs CUDA under autocast (float16)
        self.device = choice.device
        self.preset = preset
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed tile shapes: let cuDNN pick the fastest kernels once
        self.bundle = load_bundle(model_dir, folds, checkpoint_name, trust, preset.fold_count, self._load_reporter)
        self.previous: Predictor | None = None
        """A cascade's first stage (the ``3d_lowres`` sibling's predictor), else None."""
        self._previous_cache = PreprocessCache()  # the first stage's input, kept only for callers that pass ``reuse``
        if self.bundle.previous_stage_name is not None and run_previous_stage:
            self.previous = Predictor(previous_stage_dir(self.bundle), requested_preset, device, folds,
                                      checkpoint_name, trust, nnunet_exact,  # under this one's cancel token
                                      streaming=self.streaming)
            check_pair(self.bundle, self.previous.bundle)
        self.reader = reader_name(self.bundle.plans)  # the image reader the model was trained with
        self.networks = [net.to(self.device) for net in self.bundle.build_networks()]
        spatial_axes = len(self.bundle.patch_size)
        mirror_axes = tuple(a for a in self.bundle.mirror_axes if a < spatial_axes) if preset.mirroring else ()
        batch_size = preset.batch_size or default_batch_size(self.device)
        check_forward_fits(self.bundle.patch_size, self.bundle.num_input_channels,  # before any tile is allocated
                           forward_activation_bytes(self.bundle, batch_size), batch_size, self.device)
        self.backend = create_backend(choice, self.networks, mirror_axes, preset.precision,
                                      (batch_size, self.bundle.num_input_channels, *self.bundle.patch_size),
                                      self._load_reporter)
        if self.backend.name != "torch":  # its compiled copies run the tiles (nnunet_exact always runs torch)
            self.networks = []  # so the torch weights go: 157 MiB on the 105-label benchmark model
            self.bundle = replace(self.bundle, fold_weights=[])
        self.settings = RunSettings(
            folds=self.bundle.folds,
            mirror_axes=mirror_axes,
            tile_step=preset.tile_step,
            precision=self.backend.precision,
            batch_size=batch_size,
            device=self.device,
            skip_empty_tiles=preset.skip_empty_tiles,
            backend=self.backend.name,
        )
        self.load_seconds = time.perf_counter() - started
        self.convert_seconds: float = self.backend.convert_seconds + (
            self.previous.convert_seconds if self.previous is not None else 0.0)
        """Of :attr:`load_seconds`, those spent converting models for the backend (0 for torch or when cached)."""

    def check_input(self, volume: Volume, previous_labels: np.ndarray | None = None) -> None:
        """Raise :class:`InputError` if ``volume`` (with ``previous_labels``, a cascade stage's previous-stage
        segmentation in its voxel order) cannot be segmented by this model."""
        source = volume.sources[0] if volume.sources else "input"
        check_previous_labels(self.bundle, source, volume.shape, previous_labels, self.previous is not None)
        needed = self.bundle.image_channel_count  # a cascade's network also takes the one-hot first stage
        if volume.num_channels != needed:
            names = ", ".join(self.bundle.channel_names) or "?"
            raise InputError(source, f"has {volume.num_channels} channel(s) but the model needs {needed} ({names})")
        if volume.geometry.ndim == 2 and not self.bundle.is_2d:
            raise InputError(source, f"is a 2D image but the model's '{self.bundle.configuration_name}' "
                                     "configuration needs a 3D volume")
        if not np.isfinite(volume.array).all():
            raise InputError(source, "contains NaN or infinite voxel values")

    def predict(
        self,
        volume: Volume,
        on_event: EventHandler | None = None,
        cancel: CancelToken | None = None,
        provisional_labels: bool = False,
        with_probabilities: bool = False,
        reuse: PreprocessCache | None = None,
        focus: FocusToken | None = None,
        previous_labels: np.ndarray | None = None,
        with_uncertainty: bool = False,
    ) -> Result:
        """Segment ``volume``. Raises :class:`~tilewise.engine.Cancelled` (and returns nothing) once ``cancel`` is
        set; ``focus`` (set from any thread) runs the tiles where the person looks first. ``previous_labels``: a
        cascade stage's previous-stage segmentation (volume order), which its first stage then does not compute.

        ``reuse`` keeps the preprocessed input for the next call: a call with the same image and a predictor of the
        same model (any preset; ``nnunet_exact`` ones share only among themselves) skips preprocessing
        (``timings["preprocess"]`` is then only the lookup); the labels are the same either way.
        ``with_uncertainty`` adds :attr:`Result.uncertainty`, computed in the export's slab loop (the labels are the
        same). This is :meth:`prepare`, :meth:`run_tiles` and :meth:`finish` in a row.
        """
        with cancellable(cancel):
            case = self.prepare(volume, reuse=reuse, previous_labels=previous_labels, focus=focus is not None,
                                with_probabilities=with_probabilities, with_uncertainty=with_uncertainty)
            self.run_tiles(case, on_event, provisional_labels=provisional_labels, focus=focus)
            return self.finish(case, with_probabilities=with_probabilities, with_uncertainty=with_uncertainty)

    def prepare(self, volume: Volume, cancel: CancelToken | None = None, reuse: PreprocessCache | None = None,
                budget: MemoryBudget | None = None, previous_labels: np.ndarray | None = None,
                with_probabilities: bool | None = None, focus: bool = False,
                with_uncertainty: bool = False) -> PreparedCase:
        """``volume`` checked, its memory planned (against ``budget``, default the memory available now) and
        preprocessed (through ``reuse`` when given): :meth:`plan_case` then :meth:`preprocess_case`."""
        with cancellable(cancel):
            case = self.plan_case(volume, budget, previous_labels=previous_labels, focus=focus,
                                  with_probabilities=with_probabilities, with_uncertainty=with_uncertainty)
            return self.preprocess_case(case, reuse=reuse)

    def plan_case(self, volume: Volume, budget: MemoryBudget | None = None, assess: bool = True,
                  previous_labels: np.ndarray | None = None, with_probabilities: bool | None = None,
                  focus: bool = False, with_uncertainty: bool = False) -> PreparedCase:
        """The first half of :meth:`prepare`: raises :class:`InputError` for a volume this model cannot segment (or,
        under a strict :func:`~tilewise.engine.model.suitability.input_policy`, was not trained for: ``assess``) and
        :class:`OutOfMemoryError` (exit 3) for one that cannot fit in ``budget``, before any work. A cascade stage
        given ``previous_labels`` plans no first stage. Streaming: :func:`~.streaming_stage.streaming_mode`;
        ``with_uncertainty``: the plan counts the uncertainty map, which ``finish`` then gives (a streaming case's
        only if planned with it)."""
        self.check_input(volume, previous_labels)
        source = str(volume.sources[0]) if volume.sources else "input"
        notes = apply_policy(check_image(volume, self.bundle), source) if assess else []
        first = None
        if self.previous is not None and previous_labels is None:  # the full-res image waits while the first runs
            budget = budget or MemoryBudget.available_now(self.device)
            waiting = self.bundle.image_channel_count * 4 * job_size(self.bundle, volume, 1).network_voxels
            first = self.previous.plan_case(volume, replace(budget, host_bytes=budget.host_bytes - waiting), False,
                                            with_probabilities=False, focus=focus)  # its labels only
        if self.nnunet_exact:
            return PreparedCase(volume, plan=None, order=[], notes=notes, previous=first, previous_labels=previous_labels,
                                with_uncertainty=with_uncertainty)
        order = placements(self.device)
        plan = self.plan_memory(volume, order, budget, streaming_mode(self.streaming, with_probabilities, focus),
                                with_uncertainty)
        return PreparedCase(volume, plan, order[plan.placement_index:], notes=notes + plan.notes, previous=first,
                            previous_labels=previous_labels, with_probabilities=bool(with_probabilities),
                            with_uncertainty=with_uncertainty)

    def preprocess_case(self, case: PreparedCase, cancel: CancelToken | None = None,
                        reuse: PreprocessCache | None = None) -> PreparedCase:
        """The second half of :meth:`prepare`: the case's volume on the network grid (from ``reuse`` when it holds
        it), and the body mask when empty tiles are skipped; stops between slabs when ``cancel`` is set."""
        with cancellable(cancel), returning_large_blocks():  # its large copies are made once
            self._preprocess_case(case, reuse)
        return case

    def _preprocess_case(self, case: PreparedCase, reuse: PreprocessCache | None) -> None:
        if self.previous is not None and case.previous is not None:
            self.previous._preprocess_case(case.previous, self._previous_cache if reuse is not None else None)
            case.note_previous(self.previous.bundle.configuration_name)
        started = time.perf_counter()
        check_cancelled()
        case.prepared = self._preprocessed(case.volume, reuse)
        check_cancelled()
        if self.settings.skip_empty_tiles:
            case.skip_tile = empty_tile_test(case.prepared)
        if self.bundle.previous_stage_name is None:  # no previous stage's labels to stack onto the image later
            case.release_image()
        return_freed_host_memory()  # the image and the preprocessing's buffers, where the command line keeps them
        case.timings["preprocess"] = time.perf_counter() - started
        record_peak(case.peaks, "preprocess")

    def _preprocessed(self, volume: Volume, reuse: PreprocessCache | None) -> Preprocessed:
        """``volume`` on the network grid: from ``reuse`` when it holds this image for this model, else preprocessed
        (with nnU-Net's nonzero mask when tiles may be skipped, and always when kept: another preset may skip)."""
        def run(with_nonzero_mask: bool) -> Preprocessed:
            as_read = None if reads_like_simpleitk(self.reader) else read_as_model(volume, self.reader)
            return preprocess(volume, self.bundle, with_nonzero_mask=with_nonzero_mask,
                              use_nnunet_code=self.nnunet_exact, as_read=as_read)

        if reuse is None:
            return run(self.settings.skip_empty_tiles)
        key = preprocess_key(volume, self.bundle, self.reader, nnunet_code=self.nnunet_exact)
        return reuse.get_or_prepare(key, lambda: run(not self.nnunet_exact))

    def run_tiles(self, case: PreparedCase, on_event: EventHandler | None = None, cancel: CancelToken | None = None,
                  provisional_labels: bool = False, focus: FocusToken | None = None) -> None:
        """Every tile of a prepared case through the model, nearest to ``focus`` first; the logits stay on ``case``
        (its network-grid input is dropped). Uses this predictor's device and backend: one call at a time."""
        with cancellable(cancel):
            self._run_tiles(case, on_event, provisional_labels, focus)

    def _run_tiles(self, case: PreparedCase, on_event: EventHandler | None, provisional_labels: bool,
                   focus: FocusToken | None) -> None:
        prepared = case.prepared
        assert prepared is not None, "preprocess_case first"
        if case.previous_labels is not None:  # a cascade stage given its previous stage's segmentation
            self._stack_previous_stage(case, case.previous_labels, in_volume_order=True)
            prepared, case.previous_labels = case.prepared, None
        elif self.previous is not None:
            assert case.previous is not None
            before = self.previous._events_per_run(case.previous)
            total = before + self._events_per_run(case)
            self._run_first_stage(case, counted_events(on_event, 0, total), provisional_labels, focus)
            on_event = counted_events(on_event, before, total)
            prepared = case.prepared
        assert prepared is not None
        started = time.perf_counter()
        if self.nnunet_exact:
            s = self.settings
            case.logits, case.tiles, case.forward_passes = run_like_nnunet(
                self.bundle, self.networks, self.device, s.mirror_axes, s.tile_step, s.precision, prepared, on_event)
        elif case.plan is not None and case.plan.streaming:
            self._run_streaming(case, prepared, on_event, provisional_labels)
        else:
            self._run_runner(case, prepared, on_event, provisional_labels, focus)
        case.timings["sliding_window"] = time.perf_counter() - started
        case.prepared, case.skip_tile = replace(prepared, data=torch.empty(0), nonzero=None), None
        record_peak(case.peaks, "sliding_window")

    def _events_per_run(self, case: PreparedCase) -> int:
        """The tile events :meth:`run_tiles` will report for ``case`` (``nnunet_exact`` runs each fold on its own)."""
        tiles = case.tiles_to_run(self.bundle.patch_size, self.settings.tile_step)
        return tiles * (len(self.networks) if self.nnunet_exact else 1)

    def _run_first_stage(self, case: PreparedCase, on_event: EventHandler | None, provisional_labels: bool,
                         focus: FocusToken | None) -> None:
        """A cascade's first stage: its tiles and export, then its segmentation stacked onto this stage's input
        (:func:`~tilewise.engine.preprocess.cascade_input.previous_stage_input`)."""
        assert self.previous is not None and case.previous is not None and case.prepared is not None
        first = case.previous
        self.previous._run_tiles(first, on_event, provisional_labels, focus)
        labels = export_case(first, self.previous.bundle, self.nnunet_exact, self.device, False).labels
        case.note_previous(self.previous.bundle.configuration_name)
        self._stack_previous_stage(case, labels, in_volume_order=False)

    def _stack_previous_stage(self, case: PreparedCase, labels: np.ndarray, in_volume_order: bool) -> None:
        """The previous stage's segmentation ``labels`` (in the model reader's voxel order, or the volume's) stacked
        onto the case's full-res input."""
        assert case.prepared is not None
        started = time.perf_counter()
        check_cancelled()
        volume = case.volume
        image = volume.array if reads_like_simpleitk(self.reader) else read_as_model(volume, self.reader)[0]
        if in_volume_order and not reads_like_simpleitk(self.reader):  # as nnU-Net's reader reads the file
            labels = read_as_model(Volume(labels[None].astype(np.float32), volume.geometry), self.reader)[0][0]
        case.prepared = previous_stage_input(labels, image, case.prepared, self.bundle)
        check_cancelled()
        case.timings[f"{self.bundle.previous_stage_name}:to_input"] = time.perf_counter() - started

    def _runner(self, case: PreparedCase) -> SlidingWindowRunner:
        heads = self.bundle.label_manager.num_segmentation_heads
        return SlidingWindowRunner(
            self.backend, self.bundle.patch_size, self.settings.tile_step, self.settings.batch_size, heads,
            lambda logits: logits_to_labels(logits, self.bundle),
            background=background_logits(heads, self.bundle.label_manager.has_regions), skip_tile=case.skip_tile,
            placement_order=case.order,
        )

    def _run_runner(self, case: PreparedCase, prepared: Preprocessed, on_event: EventHandler | None,
                    provisional_labels: bool, focus: FocusToken | None) -> None:
        runner = self._runner(case)
        try:
            run = runner.run(prepared.data, prepared.mapper, on_event, focus, provisional_labels)
        finally:
            self._keep_batch_size(runner)
        case.logits = run.logits
        self._count(case, run)

    def _run_streaming(self, case: PreparedCase, prepared: Preprocessed, on_event: EventHandler | None,
                       provisional_labels: bool) -> None:
        """The tiles into a window of slices, each final slab exported beside them (see :mod:`.streaming_stage`)."""
        runner = self._runner(case)
        try:
            run = run_streaming(self.bundle, case, prepared, runner, on_event, provisional_labels)
        finally:
            self._keep_batch_size(runner)
        self._count(case, run)

    def _keep_batch_size(self, runner: SlidingWindowRunner) -> None:
        if runner.batch_size != self.settings.batch_size:  # the batch that fitted, for the next cases
            self.settings = replace(self.settings, batch_size=runner.batch_size)

    @staticmethod
    def _count(case: PreparedCase, run: SlidingResult) -> None:
        case.tiles, case.tiles_skipped = run.tiles_run, run.tiles_skipped
        case.forward_passes = run.forward_passes
        case.notes += run.notes

    def finish(self, case: PreparedCase, cancel: CancelToken | None = None,
               with_probabilities: bool = False, with_uncertainty: bool = False) -> Result:
        """The case's logits as labels in the volume's voxel order (and probabilities, and the uncertainty map), and
        its :class:`Result`; when device memory runs out during export, it is done again on the host."""
        started = time.perf_counter()
        with cancellable(cancel):
            exported = export_case(case, self.bundle, self.nnunet_exact, self.device, with_probabilities,
                                   with_uncertainty)
        labels, probabilities, uncertainty = exported.labels, exported.probabilities, exported.uncertainty
        prepared = case.prepared
        assert prepared is not None
        if not reads_like_simpleitk(self.reader):  # back from the model reader's voxel order to the volume's
            assert labels is not None, "label files are written slab by slab only for SimpleITK's voxel order"
            labels = labels_in_volume_order(labels, prepared.properties, self.reader, case.volume.shape)
            if uncertainty is not None:
                uncertainty = labels_in_volume_order(uncertainty, prepared.properties, self.reader, case.volume.shape)
        case.timings["export"] = time.perf_counter() - started
        record_peak(case.peaks, "export")
        tiles, passes, skipped, notes = case.counts(self.previous.bundle.configuration_name if self.previous else "")
        return Result(
            labels=labels, geometry=case.volume.geometry, probabilities=probabilities, properties=prepared.properties,
            timings={"load": self.load_seconds, "convert": self.convert_seconds, **case.timings}, tiles=tiles,
            forward_passes=passes, tiles_skipped=skipped, notes=notes, peak_rss_mb=dict(case.peaks),
            uncertainty=uncertainty, labels_file=exported.labels_file,
        )

    def plan_memory(self, volume: Volume, order: list[Placement] | None = None,
                    budget: MemoryBudget | None = None, streaming: str = Streaming.NEVER,
                    with_uncertainty: bool = False) -> MemoryPlan:
        """Where this case's logit sums will live (an index into ``order``, default every placement for the device),
        whether in a streaming window (as ``streaming`` allows, see
        :class:`~tilewise.engine.runtime.memory_plan.Streaming`), and how large its export slabs are, from
        ``budget`` (default the memory available now), the uncertainty map's volume counted when ``with_uncertainty``;
        raises :class:`OutOfMemoryError` (exit 3) when it cannot fit, before any work."""
        job = replace(job_size(self.bundle, volume, self.settings.batch_size), uncertainty=with_uncertainty)
        if not self.nnunet_exact:
            job = with_window(job, self.bundle, volume, self.settings.tile_step, self.settings.batch_size)
        pairs = [(p.device, p.dtype) for p in (order or placements(self.device))]
        budget = budget or MemoryBudget.available_now(self.device)
        if self.bundle.previous_stage_name is not None:  # the network takes the one-hot first stage too
            job = replace(job, channels=self.bundle.num_input_channels)
            budget = replace(budget, host_bytes=budget.host_bytes - job.label_bytes * job.input_voxels)
        return plan_memory(job, self.device, pairs, budget.host_bytes, budget.device_bytes, streaming)

"""The engine run on a worker thread: model loading, preprocessing and the sliding window never touch the GUI thread.

A TotalSegmentator task (:attr:`RunRequest.task`) runs the same way through a :class:`TaskPredictor`: all its models
report into one tile stream, one cancel stops them, and the result carries TotalSegmentator's statistics.

A :class:`SegmentationWorker` is a superqt :class:`~superqt.utils.WorkerBase` in Qt's global thread pool: superqt
keeps it referenced while it runs and ``WorkerBase.await_workers`` asks it to quit and waits for it when the
application quits. Load events (each fold read, converted for OpenVINO or taken from its cache) and tile events
cross to the GUI thread as Qt signals (queued connections); cancelling (superqt's ``quit()``) sets the engine's
:class:`CancelToken`, which the engine checks between folds and batches.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from superqt.utils import WorkerBase
from superqt.utils._qthreading import WorkerBaseSignals  # superqt documents SignalsClass but exports no base
from tilewise.engine import (
    AlgorithmInfo,
    Cancelled,
    CancelToken,
    FocusToken,
    Geometry,
    LoadEvent,
    OutOfMemoryError,
    Predictor,
    PreprocessCache,
    Preset,
    TaskPredictor,
    TaskSpec,
    TilewiseError,
    UntrustedCheckpointError,
    Volume,
    algorithm_of,
    is_out_of_memory,
)

from ..geometry import geometry_from_layer
from ..volumes import count_labels
from .tasks import Awaitable, start_worker
from .uncertainty import summarise


@dataclass(frozen=True)
class RunChoice:
    """What the speed panel resolves to for one run."""

    preset: Preset
    folds: tuple[str, ...] | None
    device: str
    nnunet_exact: bool = False
    """Reproduce nnU-Net's own output file voxel for voxel (``--nnunet-exact``)."""


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs: the model, the resolved settings and the image channels (z, y, x arrays)."""

    model_dir: Path
    preset: Preset
    device: str
    folds: tuple[str, ...] | None
    trust: bool
    channels: tuple[Any, ...] = field(repr=False)
    geometry: Geometry
    sources: tuple[Path, ...] = ()
    nnunet_exact: bool = False
    dicom_files: tuple[Path, ...] = ()
    """The first channel's DICOM series files (empty when it came from no DICOM series): what a DICOM SEG cites."""
    task: TaskSpec | None = None
    """A TotalSegmentator task to run instead of one model (``model_dir`` is then its first model's folder)."""

    @classmethod
    def for_layers(cls, model_dir: Path, choice: RunChoice, trust: bool, layers: list[Any],
                   task: TaskSpec | None = None) -> RunRequest:
        """A run of ``model_dir`` (or of ``task``) with ``choice`` on image ``layers`` (one per channel, the first
        one's geometry)."""
        sources = tuple(Path(s) for s in (layer.metadata.get("tilewise_source") for layer in layers) if s)
        return cls(model_dir=model_dir, preset=choice.preset, device=choice.device, folds=choice.folds, trust=trust,
                   channels=tuple(layer.data for layer in layers), geometry=geometry_from_layer(layers[0]),
                   sources=sources, nnunet_exact=choice.nnunet_exact,
                   dicom_files=tuple(Path(p) for p in layers[0].metadata.get("tilewise_dicom_files", [])), task=task)

    @property
    def predictor_key(self) -> tuple[Any, ...]:
        """Runs with the same key can share one loaded :class:`Predictor` (see :func:`predictor_key`)."""
        return predictor_key(self.model_dir, self.preset, self.device, self.folds, self.trust, self.nnunet_exact,
                             self.task)


def predictor_key(model_dir: Path, preset: Preset, device: str, folds: tuple[str, ...] | None, trust: bool,
                  nnunet_exact: bool, task: TaskSpec | None = None) -> tuple[Any, ...]:
    """What decides whether a loaded :class:`Predictor` serves a run: the one key the :class:`PredictorCache` and the
    time estimates both use, so an estimate leaves out the load exactly when the cache holds the model. A task is
    known by its name and the models it runs (``-m`` with ``--fast``)."""
    task_key = (task.model_name, tuple(p.folder for p in task.parts_to_run)) if task is not None else None
    return (str(model_dir), preset, device, tuple(folds) if folds else None, trust, nnunet_exact, task_key)


class PredictorCache:
    """Keeps the last loaded model, so a second run with the same settings starts at once, and the last preprocessed
    image (``prepared``), so a run of the same image with the same model and another preset skips preprocessing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._predictor: Predictor | TaskPredictor | None = None
        self.reused = False
        """Whether the last :meth:`get` served the model it held (no load), for learning from that run."""
        self.prepared = PreprocessCache()
        """One preprocessed input; keyed by the image's voxels, the model and how it preprocesses (engine side)."""

    def get(self, request: RunRequest, cancel: CancelToken | None = None,
            on_load: Callable[[LoadEvent], None] | None = None) -> Predictor | TaskPredictor:
        """The cached predictor for ``request`` (a :class:`TaskPredictor` for a task), loading it (on the calling
        thread) when the key changed; ``cancel`` stops a load between folds, ``on_load`` hears each fold's loading
        (a single model's; a task's models load without fold events)."""
        with self._lock:
            self.reused = self._key == request.predictor_key and self._predictor is not None
            if self.reused:
                return self._predictor
            self._key, self._predictor = None, None  # free the old model before loading the next one
            folds = list(request.folds) if request.folds else None
            if request.task is not None:
                predictor = TaskPredictor(request.task, request.preset, device=request.device, folds=folds,
                                          trust=request.trust, nnunet_exact=request.nnunet_exact, cancel=cancel)
            else:
                predictor = Predictor(request.model_dir, request.preset, device=request.device, folds=folds,
                                      trust=request.trust, nnunet_exact=request.nnunet_exact, cancel=cancel,
                                      on_load=on_load)
            self._key, self._predictor = request.predictor_key, predictor
            return predictor

    def holds(self, key: tuple[Any, ...]) -> bool:
        """True when the model for :func:`predictor_key` ``key`` is loaded: a run with that key starts without
        loading. Any thread; no lock (a load holds it for seconds): the key is set only once its model has loaded,
        and is None while one loads or after a load was cancelled."""
        return key == self._key

    def clear(self) -> None:
        """Drop the cached model (the preprocessed image stays: how a model preprocesses does not depend on trust)."""
        with self._lock:
            self._key, self._predictor = None, None


def task_algorithm(predictor: TaskPredictor) -> AlgorithmInfo:
    """A task's run as a DICOM SEG records it: 'TotalSegmentator total --fast', its folds and the preset."""
    spec = predictor.spec
    return AlgorithmInfo(model_name=f"TotalSegmentator {spec.name}{' --fast' if spec.fast else ''}",
                         folds=tuple(spec.main.folds), preset=predictor.preset.name)


CLOSE_WAIT_MS = 1000
"""How long closing the window may wait for a cancelled run on the GUI thread; the run ends on its own after."""


class RunFailure:
    """Kinds of failure the viewer treats differently."""

    UNTRUSTED = "untrusted"
    ERROR = "error"


def plain_message(error: BaseException) -> str:
    """A one-paragraph explanation of ``error`` for a dialog: the engine's message, never a traceback."""
    if isinstance(error, OutOfMemoryError):
        return (f"The computer ran out of memory while segmenting ({error}). Try the Preview or Fast preset, "
                "fewer folds, or close other programs.")
    if isinstance(error, TilewiseError):
        return str(error)
    if is_out_of_memory(error):
        return ("The computer ran out of memory while segmenting. Try the Preview or Fast preset, fewer folds, "
                "or close other programs.")
    return f"The segmentation stopped because of an unexpected problem: {type(error).__name__}: {error}"


class SegmentationSignals(WorkerBaseSignals):
    """A run's signals, beside superqt's own (``started``, ``finished``, ``errored``...)."""

    stage = Signal(str)
    loading = Signal(object)       # LoadEvent: a fold read, being converted for OpenVINO, converted or cached
    tile = Signal(object)          # TileEvent
    uncertainty = Signal(object)   # UncertaintyReview or None: where the model was unsure, just before ``succeeded``
    succeeded = Signal(object, object)  # Result, voxels per label value (counted here, off the GUI thread)
    cancelled = Signal()
    failed = Signal(str, str)      # RunFailure kind, plain message


class SegmentationWorker(Awaitable, WorkerBase):
    """Runs one :class:`RunRequest`. Exactly one of ``succeeded``, ``cancelled`` or ``failed`` is emitted, then
    superqt's ``finished``. Signals are reached through the worker (``worker.tile``), as on superqt's workers."""

    def __init__(self, request: RunRequest, cache: PredictorCache) -> None:
        super().__init__(SignalsClass=SegmentationSignals)
        self.request = request
        self.cache = cache
        self.token = CancelToken()
        self.algorithm: AlgorithmInfo | None = None
        """The model, folds and preset of a finished run, as a DICOM SEG of its labels records them."""
        self.focus = FocusToken()
        """Where the person looks: passed into ``predict``, which runs the tiles there first (set from any thread)."""

    def start(self) -> None:
        """Run in Qt's global thread pool (see :func:`.tasks.start_worker`)."""
        start_worker(self)

    def quit(self) -> None:
        """superqt's abort (also what ``await_workers`` calls at quit): the engine stops before its next batch."""
        super().quit()
        self.token.cancel()

    def cancel(self) -> None:
        """Ask the run to stop; the engine stops before its next batch."""
        self.quit()

    def isFinished(self) -> bool:  # QThread's name, which callers and tests use
        """True once the run has emitted its last signal and left the engine."""
        return self.has_ended()

    def stop_and_wait(self, timeout_ms: int = CLOSE_WAIT_MS) -> bool:
        """Cancel and wait up to ``timeout_ms`` for the run (the window is closing). True if it ended; otherwise it
        ends at the engine's next check on its own (superqt keeps it referenced and awaits it when the app quits)."""
        self.cancel()
        if self.has_ended():
            return True
        if not self.has_begun():  # still waiting to start: it will see the cancel first thing
            return False
        return self.wait(timeout_ms)

    def focus_on_slice(self, input_axis: int, index: int) -> None:
        """Run the tiles under this input slice first (any thread, before or during the run)."""
        self.focus.focus_on_slice(input_axis, index)

    def work(self) -> None:
        """Load the model (or reuse it), prepare the image and run the engine; emits the outcome (never raises)."""
        request = self.request
        try:
            self.stage.emit("Loading the model…")
            predictor = self.cache.get(request, self.token, self.loading.emit)
            if self.token.cancelled:
                raise Cancelled()
            self.stage.emit("Preparing the image…")
            array = np.stack([np.asarray(channel, dtype=np.float32) for channel in request.channels])
            volume = Volume(array=array, geometry=request.geometry, sources=request.sources)
            if isinstance(predictor, TaskPredictor):  # its parts' tiles lie on its own grids: no provisional labels
                result = predictor.predict(volume, on_event=self.tile.emit, cancel=self.token, statistics=True)
            else:
                result = predictor.predict(volume, on_event=self.tile.emit, cancel=self.token,
                                           provisional_labels=True, reuse=self.cache.prepared, focus=self.focus,
                                           with_uncertainty=True)
            if self.token.cancelled:
                raise Cancelled()
            counts = count_labels(result.labels)
            # the regions to check: every voxel is looked at, so here, off the GUI thread (a task computes no map)
            review = None if isinstance(predictor, TaskPredictor) else summarise(result)
            self.algorithm = task_algorithm(predictor) if isinstance(predictor, TaskPredictor) else \
                algorithm_of(predictor)
        except Cancelled:
            self.cancelled.emit()
        except UntrustedCheckpointError as error:
            self.failed.emit(RunFailure.UNTRUSTED, str(error))
        except Exception as error:  # noqa: BLE001 - every failure becomes a dialog, never a traceback
            self.failed.emit(RunFailure.ERROR, plain_message(error))
        else:
            self.uncertainty.emit(review)
            self.succeeded.emit(result, counts)


def stop_quietly(worker: SegmentationWorker) -> bool:
    """Cancel ``worker`` and wait up to :data:`CLOSE_WAIT_MS` for it (what napari calls when the window closes during
    a run); True: the window may close now, a run still finishing its step ends on its own."""
    worker.stop_and_wait()
    return True

"""Running a segmentation: Run checks the choices, starts the engine on its worker thread and builds the live
preview; the end of a run (done, cancelled, failed, or a model to trust first) is shown and told to napari."""
from __future__ import annotations

import weakref
from functools import partial
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QWidget

from .. import _compat
from ..controllers.estimates import RunTimeEstimates
from ..controllers.results import ResultsController
from ..controllers.run import RUN_STATES, RunController, State
from ..controllers.trust import TrustStore
from ..controllers.worker import RunFailure, RunRequest, stop_quietly
from ..geometry import slice_on_screen
from ..layers import LivePreview
from ..panels.dialogs import ask_to_trust
from ..panels.dock import DockPanels
from ..panels.model import label_names
from ..panels.run import SLICE_FIRST_NOTE, TASK_NOTE
from ..task_models import TaskModelInfo
from .report import Reporter


class RunFlow(QObject):
    """Run and Cancel: from the click to the result the review shows."""

    ended = Signal(str)  # "done", "cancelled" or "failed", after the panels show it
    result_ready = Signal(object, object, list)  # result layer, model folder, image layers: before the review shows it

    def __init__(self, parent: QWidget, viewer: Any, panels: DockPanels, run: RunController,
                 results: ResultsController, trust: TrustStore, estimates: RunTimeEstimates,
                 reporter: Reporter) -> None:
        super().__init__(parent)
        self._parent = parent
        self._viewer = viewer
        self._panels = panels
        self._run = run
        self._results = results
        self._trust = trust
        self._estimates = estimates
        self._reporter = reporter
        self._task_id: Any = None
        self._done_image: Any = None  # the image whose run the Segment step reports as done
        panels.image.changed.connect(self._on_image_changed)
        run.succeeded.connect(self._on_succeeded)
        run.finished.connect(self._on_finished)
        run.failed.connect(self._on_failed)
        run.loading.connect(panels.run.show_loading)
        viewer.dims.events.current_step.connect(self._on_slice_changed)

    def toggle(self) -> None:
        """The Run button: start a run, or cancel the one going on."""
        if self._run.state in RUN_STATES:
            self.cancel()
        else:
            self.start()

    def start(self) -> bool:
        """Start segmenting the chosen image with the chosen model and settings. False if it could not start."""
        if self._run.state is not State.IDLE:
            return False
        info = self._panels.model.current()
        if info is None:
            self._reporter.report("No model", "Choose a trained nnU-Net model under 1. Model (Browse… adds a folder).")
            return False
        problem = self._panels.image.problem()
        if problem is not None:
            self._reporter.report(*problem)
            return False
        layers = self._panels.image.chosen()
        trusted = self._trust.is_trusted(info.path)
        task = info.spec if isinstance(info, TaskModelInfo) else None
        request = RunRequest.for_layers(info.path, self._panels.speed.choice(), trusted, layers, task)
        self._panels.run.set_tile_note(TASK_NOTE if task is not None else SLICE_FIRST_NOTE)
        if not self._run.start(request, layers, slice_on_screen(self._viewer, layers[0])):
            return False
        self._panels.run.expect_loading(self._estimates.load_plan(request))  # before the worker's first fold arrives
        # The worker starts before the preview layer exists: napari takes a moment to build a layer, the worker
        # meanwhile loads the model and prepares the image. Its signals wait in the GUI thread's queue until this
        # method has returned, so no tile can arrive before the layer is there.
        names = label_names(info)
        preview = LivePreview.for_image(self._viewer, layers[0], request.geometry, names, request.sources,
                                        self._panels.review.colormap(sorted(names)),
                                        self._panels.review.layer_opacity())
        self._run.attach_preview(preview)
        self._viewer.layers.selection.active = layers[0]
        self._results.begin_run(layers[0], preview.layer)  # the review shows the preview; the old result hides
        self._reporter.clear()
        # napari asks before closing the window while this runs, then stops it cleanly
        self._task_id = _compat.register_task(self._viewer, "a segmentation is running",
                                              partial(stop_quietly, self._run.worker))
        what = f" with {info.name}" if isinstance(info, TaskModelInfo) else ""
        self._panels.run.start_activity(f"Tilewise: segmenting {layers[0].name}{what}", on_cancel=self.cancel)
        return True

    def cancel(self) -> None:
        """Stop the current run before its next batch; its partial labels are removed."""
        self._run.cancel()

    def _on_succeeded(self, request: RunRequest, result: Any) -> None:
        self._estimates.learn(request, result)
        self._panels.run.show_done(self._run.elapsed_s, result.tiles)
        self._done_image = weakref.ref(self._run.layers[0]) if self._run.layers else None
        self.result_ready.emit(self._run.result_layer, request.model_dir, list(self._run.layers))
        self._results.adopt(self._run.result_layer)

    def _on_finished(self, outcome: str) -> None:
        if outcome != "done":  # the partial labels are gone: the previous result, if any, shows again
            self._panels.run.show_stopped(outcome)
        self._results.end_run()
        _compat.end_task(self._viewer, self._task_id, outcome)
        self._task_id = None
        self.ended.emit(outcome)

    def _on_failed(self, kind: str, message: str, model_dir: Path | None) -> None:
        if kind == RunFailure.UNTRUSTED and model_dir is not None:
            self._reporter.remember(message)
            if ask_to_trust(self._parent, model_dir, self._trust.files(model_dir), message):
                self._trust.trust(model_dir)
                self.start()
            return
        self._reporter.report("The segmentation could not run", message)

    def _on_image_changed(self) -> None:
        """'Done in …' goes with its image: another image chosen (or that one closed), the step is ready again."""
        done = self._done_image() if self._done_image is not None else None
        chosen = self._panels.image.chosen()
        if self._done_image is not None and self._run.state is State.IDLE and (not chosen or chosen[0] is not done):
            self._done_image = None
            self._panels.run.show_ready()

    def _on_slice_changed(self, *_: object) -> None:
        """Ask the engine to run the tiles under the slice on screen first."""
        if self._run.worker is None or not self._run.layers:
            return
        focus = slice_on_screen(self._viewer, self._run.layers[0])
        if focus is not None:
            self._run.focus_on_slice(*focus)

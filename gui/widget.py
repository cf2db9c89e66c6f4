"""The Tilewise dock widget: model, image, speed, Run/Cancel, progress, then review (volumes, show/hide) and Save.

It puts the panels (views, :mod:`.panels`) and the controllers (state and work, :mod:`.controllers`) together and
wires them: clicks become engine runs on a worker thread and tile events labels-layer updates; reading and writing
files also happen on their own threads. The GUI thread does no numerical work, so the window stays responsive.
One result per image (:mod:`.controllers.results`); the review and Save act on the result selected in napari.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QSettings, Qt, QTimer, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QApplication, QComboBox, QShortcut, QSizePolicy, QWidget
from tilewise.engine import InputError, ModelInfo

from . import _compat
from .contributions import demo_model_dir
from .controllers.estimates import RunTimeEstimates
from .controllers.files import FilesController, describe_input
from .controllers.results import ResultsController
from .controllers.run import RUN_STATES, RunController, State
from .controllers.suitability import SuitabilityCheck
from .controllers.trust import TrustStore
from .controllers.worker import RunFailure, RunRequest, SegmentationWorker, stop_quietly
from .geometry import slice_on_screen
from .layers import META_DICOM_FILES, LivePreview, is_result
from .panels.activity import ActivityProgress
from .panels.ask_save import UnsavedEditsGuard
from .panels.common import icon_colour, titled_column
from .panels.dialogs import ask_image_path, ask_save_path, ask_to_trust, show_error
from .panels.image import ImagePanel
from .panels.model import ModelPanel, label_names
from .panels.review import ReviewPanel
from .panels.run import RunPanel
from .panels.speed import SpeedPanel

# Widgets whose dock panel was closed while they still had a thread running: kept alive until it has ended.
_CLOSING: set[TilewiseWidget] = set()


def default_settings() -> QSettings:
    """Where the viewer remembers models, folders and the last preset."""
    return QSettings("Tilewise", "Tilewise")


class TilewiseWidget(QWidget):
    """Segment the image layers of a napari viewer with a trained nnU-Net model, watching the tiles fill in."""

    run_started = Signal(object)  # the SegmentationWorker, before it starts (connect to its signals here)
    run_finished = Signal(str)   # "done", "cancelled" or "failed"
    image_opened = Signal(list)  # the layers added; [] when the image could not be opened
    saved = Signal(str)          # the file written; "" when saving failed

    def __init__(self, napari_viewer: Any, settings: QSettings | None = None, demo_model: Path | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.qsettings = settings if settings is not None else default_settings()
        self.last_error: str | None = None
        self._docked = False
        self._task_id: Any = None
        colour = icon_colour(self.viewer)

        self.run = RunController(self)
        self.results = ResultsController(self.viewer, self)
        self.files = FilesController(self.viewer, self.qsettings, self.run, self)
        self.trust = TrustStore(self.qsettings, self)
        self.fit = SuitabilityCheck(self)  # is the chosen image right for the chosen model? said before Run
        self.model_panel = ModelPanel(self.qsettings, demo_model if demo_model is not None else demo_model_dir())
        self.image_panel = ImagePanel(self.viewer, colour)
        self.settings_panel = SpeedPanel(self.qsettings)
        self.estimates = RunTimeEstimates(self.qsettings, self.settings_panel.presets, self.run.cache, self)
        self.run_panel = RunPanel(self.viewer)
        self.review = ReviewPanel()
        self.guard = UnsavedEditsGuard(self, self.viewer, self.results, partial(self.save_labels, None), self.saved,
                                       self.shutdown)
        # the panels' parts that scripts and tests drive
        self.run_button, self.progress = self.run_panel.run_button, self.run_panel.progress
        self.status, self.timing = self.run_panel.status, self.run_panel.timing
        self.save_button = self.review.save_button

        import qtawesome

        self.save_button.setIcon(qtawesome.icon("fa5s.save", color=colour))
        titled_column(self, (("1. Model", self.model_panel), ("2. Image", self.image_panel),
                             ("3. Speed and quality", self.settings_panel), ("4. Segment", self.run_panel),
                             ("5. Review and save", self.review)))
        self.setMinimumWidth(360)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Expanding)

        self.escape = QShortcut(QKeySequence(Qt.Key_Escape), self)
        self.escape.setContext(Qt.WindowShortcut)
        self.escape.setEnabled(False)
        self.escape.activated.connect(self.cancel_run)

        self.run.state_changed.connect(self._on_state_changed)
        self.run.started.connect(self.run_started)
        self.run.stage.connect(self.run_panel.show_stage)
        self.run.tile.connect(self.run_panel.show_tile)
        self.run.succeeded.connect(self._on_run_succeeded)
        self.run.finished.connect(self._on_run_finished)
        self.run.failed.connect(self._on_run_failed)
        self.review.follow(self.results)  # the review shows the result selected in napari, with its edits
        self.results.changed.connect(self._update_save_button)
        self.results.run_image_removed.connect(self.cancel_run)
        self.files.opened.connect(self._on_image_opened)
        self.files.open_failed.connect(self._on_open_failed)
        self.files.saved.connect(self._on_saved)
        self.files.save_failed.connect(self._on_save_failed)
        self.trust.trusted.connect(self.run.clear_cache)  # the next run loads the model afresh, trusted
        self.estimates.changed.connect(self.settings_panel.show_estimates)
        self.model_panel.model_changed.connect(self._on_model_changed)
        self.settings_panel.changed.connect(self._refresh_estimates)
        self.image_panel.changed.connect(self._refresh_estimates)
        self.image_panel.changed.connect(self._check_fit)
        self.fit.found.connect(self.run_panel.show_fit)
        self.image_panel.open_button.clicked.connect(self.open_image_dialog)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.save_button.clicked.connect(self._on_save_clicked)  # a bound method: a lambda here would keep the
        # widget alive forever (Qt holds the lambda, the lambda holds the widget), with its loaded model
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        self._on_state_changed(self.run.state.value)
        self._on_model_changed(self.model_panel.current())

    # ---- state (kept on the widget for scripts and tests) ----------------------------------------
    @property
    def running(self) -> bool:
        """True from Run until the run has ended (done, cancelled or failed)."""
        return self.run.state in RUN_STATES

    @property
    def opening(self) -> bool:
        """True while an image is being read."""
        return self.run.state is State.OPENING

    @property
    def saving(self) -> bool:
        """True while a segmentation is being written."""
        return self.run.state is State.SAVING

    @property
    def worker(self) -> SegmentationWorker | None:
        """The worker of the run going on."""
        return self.run.worker

    @property
    def preview(self) -> LivePreview | None:
        """The labels layer the run going on fills in."""
        return self.run.preview

    @property
    def result_layer(self) -> Any:
        """The result the review shows and Save writes: the one selected in napari, else the selected image's (after
        a run: its new result); None when none is selected."""
        layer = self.results.reviewed()
        return layer if is_result(layer) else None

    @property
    def activity(self) -> ActivityProgress | None:
        """The bar in napari's activity panel, while a run goes on or an image is read."""
        return self.run_panel.activity

    @property
    def channel_combos(self) -> list[QComboBox]:
        """One list of image layers per model channel."""
        return self.image_panel.channel_combos

    def _on_state_changed(self, value: str) -> None:
        state = State(value)
        running = state in RUN_STATES
        self.run_panel.show_state(state)
        self.image_panel.show_state(state)
        self.escape.setEnabled(running)
        for panel in (self.model_panel, self.settings_panel):
            panel.setEnabled(not running)
        self._update_save_button()
        if state is State.IDLE:
            self._release_if_closed()

    def _update_save_button(self) -> None:
        self.save_button.setEnabled(self.result_layer is not None and self.run.state is State.IDLE)
        self.save_button.setText("Saving…" if self.saving else "Save segmentation…")

    # ---- model and image choice -----------------------------------------------------------------
    def _on_model_changed(self, info: ModelInfo | None) -> None:
        self.settings_panel.set_available_folds(info.folds if info else [])
        self._refresh_channels()
        self._check_fit()

    def _check_fit(self, *_: object) -> None:
        info = self.model_panel.current()
        self.fit.check(info.path if info is not None else None, self.image_panel.chosen())

    def _refresh_channels(self, *_: object) -> None:
        info = self.model_panel.current()
        self.image_panel.set_channels(list(info.channels) if info and info.channels else ["image"])

    def _refresh_estimates(self, *_: object) -> None:
        """Show how long each preset would take for the chosen image, model and device."""
        info = self.model_panel.current()
        chosen = [layer for layer in self.image_panel.chosen() if layer is not None]
        trusted = self.trust.is_trusted(info.path) if info is not None else False
        self.estimates.refresh(info, chosen, trusted, busy=self.running, choice=self.settings_panel.choice())

    def select_image(self, *layer_names: str) -> None:
        """Use these layers (by name) as the model's channels, in order."""
        self.image_panel.select(*layer_names)

    def open_image_dialog(self) -> None:
        """Ask for an image file and open it (the dialog starts in the folder of the last image opened)."""
        path = ask_image_path(self, self.files.open_folder())
        if path:
            self.open_image(path)

    def open_image(self, path: str | Path | list[str | Path]) -> bool:
        """Start reading an image (one file per channel when a list) on its own thread; False if busy.

        The layers are added on the GUI thread when the file has been read, then ``image_opened`` is emitted with
        them; a file that cannot be read gives a dialog and ``image_opened([])``.
        """
        if not self.files.open(path):
            return False
        name = describe_input(path)
        self.image_panel.show_opening(name)
        self.run_panel.start_activity(f"Tilewise: opening {name}", unit="file")
        return True

    def _on_image_opened(self, added: list) -> None:
        if added and self.channel_combos:
            self.select_image(*[layer.name for layer in added][: len(self.channel_combos)])
        self.image_opened.emit(added)

    def _on_open_failed(self, message: str) -> None:
        self._report("The image could not be opened", message)
        self.image_opened.emit([])

    # ---- running ----------------------------------------------------------------------------------
    def _on_run_clicked(self) -> None:
        if self.running:
            self.cancel_run()
        else:
            self.start_run()

    def start_run(self) -> bool:
        """Start segmenting the chosen image with the chosen model and settings. False if it could not start."""
        if self.run.state is not State.IDLE:
            return False
        info = self.model_panel.current()
        if info is None:
            self._report("No model", "Choose a trained nnU-Net model under 1. Model (Browse… adds a folder).")
            return False
        problem = self.image_panel.problem()
        if problem is not None:
            self._report(*problem)
            return False
        layers = self.image_panel.chosen()
        request = RunRequest.for_layers(info.path, self.settings_panel.choice(), self.trust.is_trusted(info.path),
                                        layers)
        if not self.run.start(request, layers, slice_on_screen(self.viewer, layers[0])):
            return False
        # The worker starts before the preview layer exists: napari takes a moment to build a layer, the worker
        # meanwhile loads the model and prepares the image. Its signals wait in the GUI thread's queue until this
        # method has returned, so no tile can arrive before the layer is there.
        names = label_names(info)
        preview = LivePreview.for_image(self.viewer, layers[0], request.geometry, names, request.sources,
                                        self.review.colormap(sorted(names)), self.review.layer_opacity())
        self.run.attach_preview(preview)
        self.viewer.layers.selection.active = layers[0]
        self.results.begin_run(layers[0], preview.layer)  # the review shows the preview; the old result hides
        self.last_error = None
        # napari asks before closing the window while this runs, then stops it cleanly
        self._task_id = _compat.register_task(self.viewer, "a segmentation is running",
                                              partial(stop_quietly, self.run.worker))
        self.run_panel.start_activity(f"Tilewise: segmenting {layers[0].name}", on_cancel=self.cancel_run)
        return True

    def cancel_run(self) -> None:
        """Stop the current run before its next batch; its partial labels are removed."""
        self.run.cancel()

    def _on_run_succeeded(self, request: RunRequest, result: Any) -> None:
        self.estimates.learn(request, result)
        self.run_panel.show_done(self.run.elapsed_s, result.tiles)
        self.results.adopt(self.run.result_layer)

    def _on_run_finished(self, outcome: str) -> None:
        if outcome != "done":  # the partial labels are gone: the previous result, if any, shows again
            self.run_panel.show_stopped(outcome)
        self.results.end_run()
        _compat.end_task(self.viewer, self._task_id, outcome)
        self._task_id = None
        if self not in _CLOSING:  # a closed panel starts no new timing thread
            self._refresh_estimates()
        self.run_finished.emit(outcome)

    def _on_run_failed(self, kind: str, message: str, model_dir: Path | None) -> None:
        if kind == RunFailure.UNTRUSTED and model_dir is not None:
            self.last_error = message
            if ask_to_trust(self, model_dir, self.trust.files(model_dir), message):
                self.trust.trust(model_dir)
                self.start_run()
            return
        self._report("The segmentation could not run", message)

    def _on_slice_changed(self, *_: object) -> None:
        """Ask the engine to run the tiles under the slice on screen first."""
        if self.worker is None or not self.run.layers:
            return
        focus = slice_on_screen(self.viewer, self.run.layers[0])
        if focus is not None:
            self.run.focus_on_slice(*focus)

    def _report(self, title: str, message: str) -> None:
        self.last_error = message
        show_error(self, title, message)

    # ---- saving -----------------------------------------------------------------------------------
    def suggested_save_path(self, layer: Any = None) -> Path:
        """Where the Save dialog starts for result ``layer`` (default: the one reviewed): the folder saved to last
        (else its image's), '<image>_segmentation'."""
        layer = layer if layer is not None else self.result_layer
        image = self.results.image_of(layer)
        return self.files.suggested_save_path([image] if image is not None else [], layer)

    def _on_save_clicked(self) -> None:
        self.save_labels()

    def save_labels(self, path: str | Path | None = None, layer: Any = None) -> bool:
        """Start writing result ``layer`` (default: the one reviewed) with its input's geometry (asks for a file name
        when ``path`` is None). The file is written on its own thread; ``saved`` is emitted with its path ("" on
        failure). False when nothing was started."""
        layer = layer if layer is not None else self.result_layer
        if layer is None or layer not in self.viewer.layers:
            self._report("Nothing to save", "Select a segmentation in the layer list, or run one first.")
            return False
        if self.run.state is not State.IDLE:
            return False
        if path is None:
            path = ask_save_path(self, self.suggested_save_path(layer),
                                 dicom_seg=bool(layer.metadata.get(META_DICOM_FILES)))
            if not path:
                return False
        try:
            target = self.files.save(layer, path)
        except InputError as error:
            self._report("The segmentation was not saved", str(error))
            return False
        if target is None:
            return False
        self.results.start_saving(layer)  # the file holds the labels as they are now
        self.run_panel.show_message(f"Saving to {target}…")
        return True

    def _on_saved(self, target: Path) -> None:
        self.results.finish_saving(True)
        self.run_panel.show_message(f"Saved to {target}")
        self.saved.emit(str(target))

    def _on_save_failed(self, target: Path, message: str) -> None:
        self.results.finish_saving(False)
        self.run_panel.show_message("The segmentation was not saved (see the message).")
        self._report("The segmentation could not be saved", f"{target}: {message}")
        self.saved.emit("")

    # ---- the dock panel and the window ------------------------------------------------------------
    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._on_panel_closed()
        return super().event(event)

    def _on_panel_closed(self) -> None:
        """napari took the widget out of its closed dock: cancel the run and let the threads end on their own."""
        if self.run.state is not State.IDLE:
            _CLOSING.add(self)  # nothing else may hold this widget: keep it (and its threads) until they end
        if self.running:
            self.cancel_run()

    def _release_if_closed(self) -> None:
        if self in _CLOSING and self.run.state is State.IDLE:
            QTimer.singleShot(0, lambda: _CLOSING.discard(self))

    def shutdown(self) -> None:
        """Cancel a run and wait for the threads (the window is closing)."""
        self.files.shutdown()
        self.run.shutdown()
        self.estimates.shutdown()
        self.fit.shutdown()
        self.results.shutdown()
        self.run_panel.shutdown()
        _CLOSING.discard(self)

"""The Tilewise dock widget: model, image (a file, or from a PACS), speed, Run/Cancel, progress, then review (volumes,
show/hide), Save and Send to PACS.

It composes the panels (views, :mod:`.panels`), the controllers (state and work, :mod:`.controllers`) and the flows
(what a click does, :mod:`.flows`) and wires them together; it does no work of its own. Clicks become engine runs on
a worker thread and tile events labels-layer updates; reading and writing files also happen on their own threads.
The GUI thread does no numerical work, so the window stays responsive. One result per image
(:mod:`.controllers.results`); the review and Save act on the result selected in napari.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QSettings, Qt, QTimer, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QApplication, QShortcut, QSizePolicy, QVBoxLayout, QWidget
from tilewise.engine import ModelInfo

from .contributions import demo_model_dir
from .controllers.estimates import RunTimeEstimates
from .controllers.files import FilesController
from .controllers.pacs import PacsController
from .controllers.pacs_servers import ServerBook
from .controllers.results import ResultsController
from .controllers.run import RUN_STATES, RunController, State
from .controllers.suitability import SuitabilityCheck
from .controllers.trust import TrustStore
from .controllers.uncertainty import UncertaintyController
from .flows.open import OpenFlow
from .flows.pacs import PacsFlow
from .flows.report import Reporter
from .flows.run import RunFlow
from .flows.save import SaveFlow
from .panels.ask_save import UnsavedEditsGuard
from .panels.common import icon_colour, titled_column
from .panels.dock import DockPanels
from .panels.image import ImagePanel
from .panels.model import ModelPanel
from .panels.pacs_send import PacsSendPanel
from .panels.regions import RegionsPanel
from .panels.review import ReviewPanel
from .panels.run import RunPanel
from .panels.speed import SpeedPanel
from .views import ThreePlanes

# Widgets whose dock panel was closed while they still had a thread running: kept alive until it has ended.
_CLOSING: set[TilewiseWidget] = set()


def _stacked(*widgets: QWidget) -> QWidget:
    """``widgets`` one under the other, as one step's contents."""
    column = QWidget()
    layout = QVBoxLayout(column)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return column


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
        self._docked = False
        colour = icon_colour(self.viewer)

        # controllers: state and work
        self.run = RunController(self)
        self.results = ResultsController(self.viewer, self)
        self.files = FilesController(self.viewer, self.qsettings, self.run, self)
        self.trust = TrustStore(self.qsettings, self)
        self.fit = SuitabilityCheck(self)  # is the chosen image right for the chosen model? said before Run
        self.pacs_servers = ServerBook(self.qsettings, parent=self)
        self.pacs = PacsController(self.pacs_servers, self)
        self.uncertainty = UncertaintyController(self.viewer, self.run, self.results, self)  # where it was unsure
        # panels: the five steps of the dock
        self.model_panel = ModelPanel(self.qsettings, demo_model if demo_model is not None else demo_model_dir())
        self.image_panel = ImagePanel(self.viewer, colour)
        self.settings_panel = SpeedPanel(self.qsettings)
        self.estimates = RunTimeEstimates(self.qsettings, self.settings_panel.presets, self.run.cache, self)
        self.run_panel = RunPanel(self.viewer)
        self.review = ReviewPanel(save_icon_colour=colour)
        self.regions = RegionsPanel()
        self.review.add_section(self.regions)
        self.send_panel = PacsSendPanel(colour)
        self.planes = ThreePlanes(self.viewer)  # axial, coronal and sagittal side by side, once shown
        self.image_panel.view_buttons.add(self.planes.button())
        panels = DockPanels(self.model_panel, self.image_panel, self.settings_panel, self.run_panel, self.review)
        # flows: what a click does
        self.reporter = Reporter(self)
        self.opener = OpenFlow(self, panels, self.files, self.reporter)
        self.runner = RunFlow(self, self.viewer, panels, self.run, self.results, self.trust, self.estimates,
                              self.reporter)
        self.saver = SaveFlow(self, self.viewer, panels, self.run, self.results, self.files, self.reporter)
        self.pacs_flow = PacsFlow(self, self.pacs_servers, self.pacs, self.opener, self.files, self.send_panel,
                                  self.reporter)
        self.guard = UnsavedEditsGuard(self, self.viewer, self.results, partial(self.saver.save, None), self.saved,
                                       self.shutdown)

        titled_column(self, (("1. Model", self.model_panel), ("2. Image", self.image_panel),
                             ("3. Speed and quality", self.settings_panel), ("4. Segment", self.run_panel),
                             ("5. Review and save", _stacked(self.review, self.send_panel))))
        self.setMinimumWidth(360)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Expanding)
        self.escape = QShortcut(QKeySequence(Qt.Key_Escape), self)
        self.escape.setContext(Qt.WindowShortcut)
        self.escape.setEnabled(False)
        self._wire()
        self._on_state_changed(self.run.state.value)
        self._on_model_changed(self.model_panel.current())

    def _wire(self) -> None:
        """Connect the panels' clicks to the flows, and the controllers' news to the panels."""
        self.escape.activated.connect(self.runner.cancel)
        self.run.state_changed.connect(self._on_state_changed)
        self.run.started.connect(self.run_started)
        self.run.stage.connect(self.run_panel.show_stage)
        self.run.tile.connect(self.run_panel.show_tile)
        self.runner.ended.connect(self._on_run_ended)
        self.opener.opened.connect(self.image_opened)
        self.saver.saved.connect(self.saved)
        self.review.follow(self.results)  # the review shows the result selected in napari, with its edits
        self.regions.follow(self.results, self.uncertainty)  # and where the model was unsure about it
        self.results.changed.connect(self._update_save_button)
        self.results.run_image_removed.connect(self.runner.cancel)
        self.trust.trusted.connect(self.run.clear_cache)  # the next run loads the model afresh, trusted
        self.estimates.changed.connect(self.settings_panel.show_estimates)
        self.model_panel.model_changed.connect(self._on_model_changed)
        self.settings_panel.changed.connect(self._refresh_estimates)
        self.image_panel.changed.connect(self._refresh_estimates)
        self.image_panel.changed.connect(self._check_fit)
        self.fit.found.connect(self.run_panel.show_fit)
        self.runner.result_ready.connect(self.fit.label_result)  # the result keeps what was said of its image
        self.fit.labelled.connect(self.review.refresh_fit)
        # bound methods, not lambdas: Qt would hold a lambda and the lambda the widget, with its loaded model
        self.image_panel.open_button.clicked.connect(self.opener.ask_and_open)
        self.image_panel.pacs_button.clicked.connect(self.pacs_flow.open_browser)
        self.run_panel.run_button.clicked.connect(self.runner.toggle)
        self.review.save_button.clicked.connect(self.saver.ask_and_save)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    # ---- what scripts and tests drive -------------------------------------------------------------
    def open_image(self, path: str | Path | list[str | Path]) -> bool:
        """Start reading an image (one file per channel when a list) on its own thread; False if busy.

        The layers are added on the GUI thread when the file has been read, then ``image_opened`` is emitted with
        them; a file that cannot be read gives a dialog and ``image_opened([])``.
        """
        return self.opener.open(path)

    def open_from_pacs(self) -> Any:
        """Show the PACS browser (Open from PACS…); returns it."""
        return self.pacs_flow.open_browser()

    def send_to_pacs(self, server_name: str, layer: Any = None) -> bool:
        """Store result ``layer`` (default: the one reviewed) as a DICOM SEG on server ``server_name``; see
        :meth:`PacsFlow.send`. ``pacs_flow.sent`` follows."""
        return self.pacs_flow.send(server_name, layer)

    def select_image(self, *layer_names: str) -> None:
        """Use these layers (by name) as the model's channels, in order."""
        self.image_panel.select(*layer_names)

    def start_run(self) -> bool:
        """Start segmenting the chosen image with the chosen model and settings. False if it could not start."""
        return self.runner.start()

    def cancel_run(self) -> None:
        """Stop the current run before its next batch; its partial labels are removed."""
        self.runner.cancel()

    def save_labels(self, path: str | Path | None = None, layer: Any = None) -> bool:
        """Start writing result ``layer`` (default: the one reviewed); see :meth:`SaveFlow.save`."""
        return self.saver.save(path, layer)

    def suggested_save_path(self, layer: Any = None) -> Path:
        """Where the Save dialog starts for result ``layer`` (default: the one reviewed)."""
        return self.saver.suggested_path(layer)

    @property
    def result_layer(self) -> Any:
        """The result the review shows and Save writes (None when none is selected)."""
        return self.saver.reviewed()

    @property
    def running(self) -> bool:
        """True from Run until the run has ended (done, cancelled or failed)."""
        return self.run.state in RUN_STATES

    @property
    def last_error(self) -> str | None:
        """The last problem told to the person at the screen."""
        return self.reporter.last_error

    # ---- what the panels show -------------------------------------------------------------------
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
        saving = self.run.state is State.SAVING
        self.review.show_save_state(enabled=self.result_layer is not None and self.run.state is State.IDLE,
                                    saving=saving)
        self.pacs_flow.update_send_button(self.result_layer, idle=self.run.state is State.IDLE)

    def _on_model_changed(self, info: ModelInfo | None) -> None:
        self.settings_panel.set_available_folds(info.folds if info else [])
        channels = list(info.channels) if info and info.channels else ["image"]
        self.image_panel.set_channels(channels)
        self._check_fit()

    def _check_fit(self, *_: object) -> None:
        info = self.model_panel.current()
        self.fit.check(info.path if info is not None else None, self.image_panel.chosen())

    def _refresh_estimates(self, *_: object) -> None:
        """Show how long each preset would take for the chosen image, model and device."""
        info = self.model_panel.current()
        chosen = [layer for layer in self.image_panel.chosen() if layer is not None]
        trusted = self.trust.is_trusted(info.path) if info is not None else False
        self.estimates.refresh(info, chosen, trusted, busy=self.running, choice=self.settings_panel.choice())

    def _on_run_ended(self, outcome: str) -> None:
        if self not in _CLOSING:  # a closed panel starts no new timing thread
            self._refresh_estimates()
        self.run_finished.emit(outcome)

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
        self.planes.close()
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
        self.pacs.shutdown()
        self.pacs_flow.shutdown()
        self.run.shutdown()
        self.estimates.shutdown()
        self.fit.shutdown()
        self.results.shutdown()
        self.run_panel.shutdown()
        self.planes.close()
        _CLOSING.discard(self)

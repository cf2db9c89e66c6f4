"""The Tilewise dock widget: model, image, speed, Run/Cancel, progress, then review (volumes, show/hide) and Save.

It turns clicks into engine runs on a worker thread and tile events into labels-layer updates; reading and writing
files also happen on their own threads. The GUI thread does no numerical work, so the window stays responsive.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QSettings, Qt, QTimer, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QApplication, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QProgressBar, QPushButton,
    QScrollArea, QShortcut, QSizePolicy, QVBoxLayout, QWidget,
)

from tilewise.engine import write_labels
from tilewise.engine.errors import InputError
from tilewise.engine.data.safe_output import refuse_overwriting_inputs
from tilewise.engine.model.catalog import ModelInfo
from tilewise.engine.estimate import nonzero_extent
from tilewise.engine.data.readers import strip_suffix

from . import _gc
from .panels.activity import ActivityProgress
from .contributions import demo_model_dir, read_layers
from .panels.ct_window import CtWindowButtons, looks_like_ct
from .panels.dialogs import ask_yes_no, show_error
from .controllers.estimates import RunTimeEstimates
from .geometry import geometry_from_layer, in_patient_axes, through_plane_axis
from .layers import LivePreview
from .panels.model import ModelPanel, label_names
from .panels.review import META_COUNTS, META_NAMES, META_SOURCES, META_VOXEL_ML, ReviewPanel
from .panels.speed import SettingsPanel
from .controllers.tasks import BackgroundTask
from .volumes import voxel_volume_ml
from .controllers.worker import PredictorCache, RunFailure, RunRequest, SegmentationWorker

SETTINGS_TRUSTED = "models/trusted"
SETTINGS_OPEN_FOLDER = "files/open_folder"
SETTINGS_SAVE_FOLDER = "files/save_folder"
IMAGE_FILTER = "Medical images (*.nii.gz *.nii *.nrrd *.mha *.mhd);;All files (*)"
LABELS_FILTER = "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha *.mhd)"
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
PROGRESS_INTERVAL_MS = 100
FINISHING_TEXT = "Finishing: writing labels on the input grid…"

# Widgets whose dock panel was closed while they still had a thread running: kept alive until it has ended.
_CLOSING: set[TilewiseWidget] = set()


def default_settings() -> QSettings:
    """Where the viewer remembers models, folders and the last preset."""
    return QSettings("Tilewise", "Tilewise")


def format_duration(seconds: float) -> str:
    """'0:07', '2:05', '1:02:05'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _shrinkable(combo: QComboBox) -> QComboBox:
    """Let a combo box narrower than its longest item (the dock stays narrow; the list still shows it all)."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(12)
    return combo


def _stop_quietly(worker: SegmentationWorker) -> bool:
    """Cancel ``worker`` and wait for its thread; nothing to do if it has already ended and been deleted."""
    try:
        return worker.stop_and_wait()
    except RuntimeError:  # the Qt object is gone: the run ended long ago
        return True


def _display_name(path: str | Path | list[str | Path]) -> str:
    first = Path(path if isinstance(path, (str, Path)) else path[0])
    return first.name + ("" if isinstance(path, (str, Path)) or len(path) == 1 else f" (+{len(path) - 1})")


class TilewiseWidget(QWidget):
    """Segment the image layers of a napari viewer with a trained nnU-Net model, watching the tiles fill in."""

    run_started = Signal(object)  # the SegmentationWorker, before its thread starts (connect to its signals here)
    run_finished = Signal(str)   # "done", "cancelled" or "failed"
    image_opened = Signal(list)  # the layers added; [] when the image could not be opened
    saved = Signal(str)          # the file written; "" when saving failed

    def __init__(self, napari_viewer: Any, settings: QSettings | None = None, demo_model: Path | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.qsettings = settings if settings is not None else default_settings()
        self.cache = PredictorCache()
        self.worker: SegmentationWorker | None = None
        self.reader: BackgroundTask | None = None
        self.writer: BackgroundTask | None = None
        self.preview: LivePreview | None = None
        self.result_layer: Any = None
        self.activity: ActivityProgress | None = None
        self._run_layers: list[Any] = []
        self._task_id: Any = None
        self._started = 0.0
        self._cancelling = False
        self._finishing = False
        self._gc_paused = False
        self._docked = False
        self._latest_tile: Any = None
        self._open_path = Path()
        self._extent_key: tuple[int, ...] = ()
        self._extent: tuple[int, ...] = ()
        self.last_error: str | None = None
        icon_colour = self._icon_colour()

        import qtawesome

        self._icons = {
            "run": qtawesome.icon("fa5s.play", color="#3cb44b"),
            "cancel": qtawesome.icon("fa5s.stop", color="#e6194b"),
            "save": qtawesome.icon("fa5s.save", color=icon_colour),
            "open": qtawesome.icon("fa5s.file-import", color=icon_colour),
        }

        # 1. model
        self.model_panel = ModelPanel(self.qsettings, demo_model if demo_model is not None else demo_model_dir())
        model_box = QGroupBox("1. Model")
        QVBoxLayout(model_box).addWidget(self.model_panel)

        # 2. image
        self.channel_form = QFormLayout()
        self.channel_combos: list[QComboBox] = []
        self.ct_window = CtWindowButtons()
        self.ct_row = QWidget()
        ct_layout = QFormLayout(self.ct_row)
        ct_layout.setContentsMargins(0, 0, 0, 0)
        ct_title = QLabel("CT window:")
        ct_title.setToolTip("Standard radiology windows (width / level in Hounsfield units); they change only how "
                            "the image is shown, never the segmentation")
        ct_layout.addRow(ct_title, self.ct_window)
        self.open_button = QPushButton(self._icons["open"], "Open image…")
        self.open_button.setToolTip("Open a NIfTI, NRRD or MetaImage file (for a DICOM series use File > Open Folder)")
        self.open_busy = QProgressBar()
        self.open_busy.setRange(0, 0)
        self.open_busy.setTextVisible(False)
        self.open_busy.setMaximumHeight(8)
        self.open_status = QLabel()
        self.open_status.setWordWrap(True)
        image_box = QGroupBox("2. Image")
        image_layout = QVBoxLayout(image_box)
        image_layout.addLayout(self.channel_form)
        image_layout.addWidget(self.ct_row)
        image_layout.addWidget(self.open_button)
        image_layout.addWidget(self.open_busy)
        image_layout.addWidget(self.open_status)

        # 3. speed
        self.settings_panel = SettingsPanel(self.qsettings)
        self.estimates = RunTimeEstimates(self.settings_panel, self.qsettings)
        speed_box = QGroupBox("3. Speed and quality")
        QVBoxLayout(speed_box).addWidget(self.settings_panel)

        # 4. run and progress
        self.run_button = QPushButton()
        self.run_button.setMinimumHeight(36)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v of %m tiles")
        self.progress.setTextVisible(True)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.timing = QLabel("")
        run_box = QGroupBox("4. Segment")
        run_layout = QVBoxLayout(run_box)
        run_layout.addWidget(self.run_button)
        run_layout.addWidget(self.progress)
        run_layout.addWidget(self.status)
        run_layout.addWidget(self.timing)

        # 5. review and save
        self.review = ReviewPanel()
        self.save_button = self.review.save_button
        self.save_button.setIcon(self._icons["save"])
        review_box = QGroupBox("5. Review and save")
        QVBoxLayout(review_box).addWidget(self.review)

        content = QWidget()
        layout = QVBoxLayout(content)
        for box in (model_box, image_box, speed_box, run_box, review_box):
            layout.addWidget(box)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(content)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # long texts wrap or elide instead
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        for combo in content.findChildren(QComboBox):
            _shrinkable(combo)
        self.setMinimumWidth(360)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Expanding)

        self.escape = QShortcut(QKeySequence(Qt.Key_Escape), self)
        self.escape.setContext(Qt.WindowShortcut)
        self.escape.setEnabled(False)
        self.escape.activated.connect(self.cancel_run)
        self._progress_timer = QTimer(self)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.setInterval(PROGRESS_INTERVAL_MS)
        self._progress_timer.timeout.connect(self._update_progress)

        self.model_panel.model_changed.connect(self._on_model_changed)
        self.settings_panel.changed.connect(self._refresh_estimates)
        self.open_button.clicked.connect(self.open_image_dialog)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.save_button.clicked.connect(self._on_save_clicked)  # a bound method: a lambda here would keep the
        # widget alive forever (Qt holds the lambda, the lambda holds the widget), with its loaded model
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        self._update_enabled()
        self._on_model_changed(self.model_panel.current())

    def _icon_colour(self) -> str:
        try:
            from napari.utils.theme import get_theme

            return get_theme(self.viewer.theme).icon.as_hex()
        except Exception:  # noqa: BLE001 - any theme problem: a neutral grey still shows on light and dark
            return "#909090"

    # ---- state --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from Run until the run has ended (done, cancelled or failed)."""
        return self.worker is not None

    @property
    def opening(self) -> bool:
        """True while an image is being read."""
        return self.reader is not None

    @property
    def saving(self) -> bool:
        """True while a segmentation is being written."""
        return self.writer is not None

    def _update_enabled(self) -> None:
        running, opening = self.running, self.opening
        self.run_button.setEnabled(not opening and not (running and self._cancelling))
        if running:
            self.run_button.setIcon(self._icons["cancel"])
            self.run_button.setText("Cancel (Esc)")
            self.run_button.setToolTip("Stop the segmentation; its partial labels are removed")
        else:
            self.run_button.setIcon(self._icons["run"])
            self.run_button.setText("Run segmentation")
            self.run_button.setToolTip("Segment the chosen image with the chosen model; the labels fill in "
                                       "tile by tile, the slice on screen first")
        self.escape.setEnabled(running)
        for panel in (self.model_panel, self.settings_panel):
            panel.setEnabled(not running)
        self.open_button.setEnabled(not running and not opening)
        for combo in self.channel_combos:
            combo.setEnabled(not running and not opening)
        self.open_busy.setVisible(opening)
        self.open_status.setVisible(opening)
        self.save_button.setEnabled(self._result_available() and not running and not self.saving)
        self.save_button.setText("Saving…" if self.saving else "Save segmentation…")

    def _result_available(self) -> bool:
        return self.result_layer is not None and self.result_layer in self.viewer.layers

    # ---- model and image choice -----------------------------------------------------------------
    def _on_model_changed(self, info: ModelInfo | None) -> None:
        self.settings_panel.set_available_folds(info.folds if info else [])
        self._refresh_channels()

    def image_layers(self) -> list[Any]:
        """Image layers the model can run on: 3D, grey-scale."""
        from napari.layers import Image

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb]

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and event.type == "inserted":
            layer.events.name.connect(self._refresh_channels)
            self._label_slider_axes(layer)
        if event is not None and event.type == "removed" and layer is not None and layer is self.result_layer:
            self.review.show_layer(None)
            self._update_enabled()
        self._refresh_channels()

    def _label_slider_axes(self, layer: Any) -> None:
        """Name the sliders after the anatomical planes they step through, when the image is in patient axes."""
        geometry = getattr(layer, "metadata", {}).get("tilewise_geometry")
        if geometry is not None and self.viewer.dims.ndim == 3 and in_patient_axes(geometry):
            self.viewer.dims.axis_labels = ("axial", "coronal", "sagittal")

    def _channel_names(self) -> list[str]:
        info = self.model_panel.current()
        return list(info.channels) if info and info.channels else ["image"]

    def _refresh_channels(self, *_: object) -> None:
        names = self._channel_names()
        layers = self.image_layers()
        previous = [combo.currentData() for combo in self.channel_combos]
        while self.channel_form.rowCount():
            self.channel_form.removeRow(0)
        self.channel_combos = []
        for index, channel in enumerate(names):
            combo = _shrinkable(QComboBox())
            combo.setToolTip(f"The image layer that holds the model's '{channel}' channel")
            for layer in layers:
                combo.addItem(layer.name, layer.name)
            if not layers:
                combo.addItem("Open an image first", None)
            wanted = previous[index] if index < len(previous) else None
            position = combo.findData(wanted) if wanted else -1
            if position < 0 and layers:
                position = min(index, len(layers) - 1)
            combo.setCurrentIndex(max(position, 0))
            combo.currentIndexChanged.connect(self._update_ct_window)
            combo.currentIndexChanged.connect(self._refresh_estimates)
            combo.setEnabled(not self.running and not self.opening)
            self.channel_form.addRow(f"{channel}:", combo)
            self.channel_combos.append(combo)
        self._update_ct_window()
        self._refresh_estimates()

    def _refresh_estimates(self, *_: object) -> None:
        """Show how long each preset would take for the chosen image, model and device."""
        info = self.model_panel.current()
        layers = {layer.name: layer for layer in self.image_layers()}
        chosen = [layers[name] for name in (combo.currentData() for combo in self.channel_combos) if name in layers]
        geometry = geometry_from_layer(chosen[0]) if chosen else None
        extent = self._nonzero_extent(chosen) if chosen else ()
        trusted = self._trusted(info.path) if info is not None else False
        self.estimates.refresh(info, geometry, extent, trusted, busy=self.running)

    def _nonzero_extent(self, layers: list[Any]) -> tuple[int, ...]:
        """Size of the chosen images' nonzero box (cached per set of arrays: a strided look, milliseconds)."""
        key = tuple(id(layer.data) for layer in layers)
        if key != self._extent_key:
            shapes = {tuple(layer.data.shape) for layer in layers}
            self._extent = nonzero_extent([layer.data for layer in layers]) if len(shapes) == 1 else ()
            self._extent_key = key
        return self._extent

    def _update_ct_window(self, *_: object) -> None:
        """Offer the CT windows for the image chosen for the model's CT channel, when the image looks like CT."""
        names = self._channel_names()
        layers = {layer.name: layer for layer in self.image_layers()}
        chosen = [layers.get(combo.currentData()) for combo in self.channel_combos]
        ct_index = next((i for i, name in enumerate(names) if looks_like_ct([name])), 0)
        target = chosen[ct_index] if ct_index < len(chosen) else None
        show = target is not None and looks_like_ct([names[ct_index]] if ct_index < len(names) else [], target)
        self.ct_window.set_layer(target if show else None)
        self.ct_row.setVisible(show)

    def select_image(self, *layer_names: str) -> None:
        """Use these layers (by name) as the model's channels, in order."""
        for combo, name in zip(self.channel_combos, layer_names):
            index = combo.findData(name)
            if index < 0:
                raise KeyError(name)
            combo.setCurrentIndex(index)

    def open_image_dialog(self) -> None:
        """Ask for an image file and open it (the dialog starts in the folder of the last image opened)."""
        folder = str(self.qsettings.value(SETTINGS_OPEN_FOLDER, "") or "")
        path, _ = QFileDialog.getOpenFileName(self, "Open an image", folder, IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str | Path | list[str | Path]) -> bool:
        """Start reading an image (one file per channel when a list) on its own thread; False if busy.

        The layers are added on the GUI thread when the file has been read, then ``image_opened`` is emitted with
        them; a file that cannot be read gives a dialog and ``image_opened([])``.
        """
        if self.opening or self.running:
            return False
        argument = path if isinstance(path, (str, Path)) else [str(p) for p in path]
        name = _display_name(path)
        reader = BackgroundTask(read_layers, argument)
        reader.succeeded.connect(self._on_image_read)
        reader.failed.connect(self._on_image_failed)
        self.reader = reader
        self._open_path = Path(argument if isinstance(argument, (str, Path)) else argument[0])
        self.open_status.setText(f"Opening {name}…")
        self._update_enabled()
        self._start_activity(f"Tilewise: opening {name}", unit="file")
        reader.start()
        return True

    def _finish_reading(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.wait(10_000)  # it has emitted its last signal
            reader.deleteLater()
        self._close_activity()
        self._update_enabled()
        self._release_if_closed()

    def _on_image_read(self, layer_data: list) -> None:
        self._finish_reading()
        added = [self.viewer.add_image(data, **kwargs) for data, kwargs, _ in layer_data]
        self.qsettings.setValue(SETTINGS_OPEN_FOLDER, str(self._open_path.parent))
        if added and self.channel_combos:
            self.select_image(*[layer.name for layer in added][: len(self.channel_combos)])
        self.image_opened.emit(added)

    def _on_image_failed(self, message: str) -> None:
        self._finish_reading()
        self._report("The image could not be opened", message)
        self.image_opened.emit([])

    # ---- running ----------------------------------------------------------------------------------
    def _on_run_clicked(self) -> None:
        if self.running:
            self.cancel_run()
        else:
            self.start_run()

    def _chosen_layers(self) -> list[Any] | None:
        names = [combo.currentData() for combo in self.channel_combos]
        layers = {layer.name: layer for layer in self.image_layers()}
        if not names or any(name not in layers for name in names):
            self._report("No image", "Open an image (File > Open, or Open image…) and choose it under 2. Image.")
            return None
        chosen = [layers[name] for name in names]
        shapes = {tuple(layer.data.shape) for layer in chosen}
        if len(shapes) > 1:
            self._report("Images do not match",
                         "The chosen channel images have different sizes ("
                         + ", ".join(f"{layer.name}: {tuple(layer.data.shape)}" for layer in chosen)
                         + "). Choose images of the same scan.")
            return None
        return chosen

    def _trusted(self, model_dir: Path) -> bool:
        value = self.qsettings.value(SETTINGS_TRUSTED, [])
        trusted = [value] if isinstance(value, str) else list(value or [])
        return str(model_dir) in trusted

    def trust_model(self, model_dir: Path) -> None:
        """Remember that checkpoints in ``model_dir`` may be fully unpickled."""
        value = self.qsettings.value(SETTINGS_TRUSTED, [])
        trusted = [value] if isinstance(value, str) else list(value or [])
        if str(model_dir) not in trusted:
            self.qsettings.setValue(SETTINGS_TRUSTED, trusted + [str(model_dir)])

    def start_run(self) -> bool:
        """Start segmenting the chosen image with the chosen model and settings. False if it could not start."""
        if self.running or self.opening:
            return False
        info = self.model_panel.current()
        if info is None:
            self._report("No model", "Choose a trained nnU-Net model under 1. Model (Browse… adds a folder).")
            return False
        layers = self._chosen_layers()
        if layers is None:
            return False
        choice = self.settings_panel.choice()
        geometry = geometry_from_layer(layers[0])
        sources = tuple(Path(s) for s in (layer.metadata.get("tilewise_source") for layer in layers) if s)
        request = RunRequest(
            model_dir=info.path, preset=choice.preset, device=choice.device, folds=choice.folds,
            trust=self._trusted(info.path), channels=tuple(layer.data for layer in layers), geometry=geometry,
            sources=sources,
        )
        self._pause_gc()  # no full garbage collection (a freeze of half a second) while the run goes on
        self._discard_preview()
        worker = SegmentationWorker(request, self.cache)
        worker.stage.connect(self._on_stage)
        worker.tile.connect(self._on_tile)
        worker.succeeded.connect(self._on_succeeded)
        worker.cancelled.connect(self._on_cancelled)
        worker.failed.connect(self._on_failed)
        self.worker = worker
        self._run_layers = layers
        self._on_slice_changed()
        # The worker starts before the preview layer exists: napari takes a moment to build a layer, the worker
        # meanwhile loads the model and prepares the image. Its signals wait in the GUI thread's queue until this
        # method has returned, so no tile can arrive before the layer is there.
        self.run_started.emit(worker)
        self._started = time.perf_counter()
        worker.start()
        names = label_names(info)
        values = sorted(names)
        self.preview = LivePreview(self.viewer, f"{layers[0].name} segmentation",
                                   tuple(int(s) for s in layers[0].data.shape), geometry, values,
                                   colormap=self.review.colormap(values), opacity=self.review.layer_opacity(),
                                   metadata={META_NAMES: names, META_VOXEL_ML: voxel_volume_ml(geometry),
                                             META_SOURCES: [str(s) for s in sources]})
        self.review.show_layer(self.preview.layer)
        self.viewer.layers.selection.active = layers[0]
        self.last_error = None
        self._cancelling = False
        self._finishing = False
        self._latest_tile = None
        self.progress.setRange(0, 0)  # busy until the first tile reports the total
        self.timing.setText("")
        self._update_enabled()
        self._register_task(worker)
        self._start_activity(f"Tilewise: segmenting {layers[0].name}", on_cancel=self.cancel_run)
        return True

    def cancel_run(self) -> None:
        """Stop the current run before its next batch; its partial labels are removed."""
        if self.worker is None or self._cancelling:
            return
        self._cancelling = True
        self.worker.cancel()
        self.status.setText("Cancelling: waiting for the current tile to finish…")
        self._update_enabled()
        self._schedule_progress()

    def shutdown(self) -> None:
        """Cancel a run and wait for the threads (the window is closing)."""
        worker = self.worker
        if worker is not None:
            for signal in (worker.stage, worker.tile, worker.succeeded, worker.cancelled, worker.failed):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass
            worker.stop_and_wait()
            self.worker = None
        for task in (self.reader, self.writer):
            if task is not None:
                try:
                    task.succeeded.disconnect()
                    task.failed.disconnect()
                    task.wait()
                except (RuntimeError, TypeError):
                    pass
        self.reader = self.writer = None
        self.estimates.shutdown()
        self.review.shutdown()
        self._progress_timer.stop()
        self._close_activity()
        self._resume_gc()
        _CLOSING.discard(self)

    # ---- the dock panel -------------------------------------------------------------------------------
    def event(self, event: QEvent) -> bool:  # noqa: D102 - Qt override
        if event.type() == QEvent.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._on_panel_closed()
        return super().event(event)

    def _on_panel_closed(self) -> None:
        """napari took the widget out of its closed dock: cancel the run and let the threads end on their own."""
        if self.running or self.opening or self.saving:
            _CLOSING.add(self)  # nothing else may hold this widget: keep it (and its threads) until they end
        if self.running:
            self.cancel_run()

    def _release_if_closed(self) -> None:
        if self in _CLOSING and not (self.running or self.opening or self.saving):
            QTimer.singleShot(0, lambda: _CLOSING.discard(self))

    # ---- napari's task status and activity panel ----------------------------------------------------
    def _register_task(self, worker: SegmentationWorker) -> None:
        """Tell napari a run is going on, so closing the window asks first and then cancels it cleanly."""
        window = getattr(self.viewer, "window", None)
        register = getattr(window, "_register_task_status", None)
        if register is None:
            return
        try:
            from napari.utils.task_status import Status

            self._task_id = register("tilewise", Status.BUSY, "a segmentation is running",
                                     cancel_callback=lambda: _stop_quietly(worker))
        except Exception:  # noqa: BLE001 - napari-internal API; without it the aboutToQuit hook still cancels
            self._task_id = None

    def _update_task(self, outcome: str) -> None:
        window = getattr(self.viewer, "window", None)
        update = getattr(window, "_update_task_status", None)
        if update is None or self._task_id is None:
            return
        try:
            from napari.utils.task_status import Status

            status = {"done": Status.COMPLETED, "cancelled": Status.CANCELLED}.get(outcome, Status.FAILED)
            update(self._task_id, status, "")
        except Exception:  # noqa: BLE001
            pass
        self._task_id = None

    def _start_activity(self, description: str, on_cancel: Any = None, unit: str = "tile") -> None:
        """A bar in napari's activity panel, shown from the next timer tick (a quick task never shows one)."""
        self._close_activity()
        self.activity = ActivityProgress(description, on_cancel=on_cancel, unit=unit, viewer=self.viewer)
        self._schedule_progress()

    def _close_activity(self) -> None:
        activity, self.activity = self.activity, None
        if activity is not None:
            activity.close()

    def _schedule_progress(self) -> None:
        if not self._progress_timer.isActive():
            self._progress_timer.start()

    def _update_progress(self) -> None:
        """Show the latest tile in the dock and in napari's activity panel (from a timer, at most ~10 times a
        second: a text change lays out the dock again, and napari's bar processes events when updated)."""
        if self.running:
            self._show_tile_progress()
        activity = self.activity
        if activity is None:
            return
        event = self._latest_tile
        if self.running:
            if self._cancelling:
                activity.set_busy("Tilewise: cancelling")
            elif self._finishing:
                activity.set_busy("Tilewise: writing labels on the input grid")
            elif event is not None:
                activity.set_progress(event.done, event.total)
        if not activity.apply():
            self._schedule_progress()  # the activity panel shows counts less often: this one comes later

    # ---- garbage collection -------------------------------------------------------------------------
    def _pause_gc(self) -> None:
        if not self._gc_paused:
            self._gc_paused = True
            _gc.pause_full_collections()

    def _resume_gc(self) -> None:
        if self._gc_paused:
            self._gc_paused = False
            _gc.resume_full_collections()

    def keyPressEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        if event.key() == Qt.Key_Escape and self.running:
            self.cancel_run()
            event.accept()
            return
        super().keyPressEvent(event)

    # ---- worker signals (GUI thread) --------------------------------------------------------------
    def _on_stage(self, text: str) -> None:
        if not self._cancelling:
            self.status.setText(text)

    def _on_tile(self, event: Any) -> None:
        """Queue the tile's labels for the preview; the texts and bars follow at most ~10 times a second."""
        if self.preview is None or self.worker is None:
            return
        self.preview.add(event.input_box, event.labels)
        self._latest_tile = event
        if event.done >= event.total and not self._finishing:
            # every tile has run: the engine now puts the labels back on the input grid, with no steps to count
            self._finishing = True
            self.progress.setRange(0, 0)
            if not self._cancelling:
                self.status.setText(FINISHING_TEXT)
            self.timing.setText(f"All {event.total} tiles done in {format_duration(event.elapsed_s)}")
        self._schedule_progress()

    def _show_tile_progress(self) -> None:
        event = self._latest_tile
        if event is None or self._finishing:
            return
        if self.progress.maximum() != event.total:
            self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        if not self._cancelling:
            self.status.setText(f"Segmenting: tile {event.done} of {event.total}. The slice on screen runs first.")
        self.timing.setText(f"Elapsed {format_duration(event.elapsed_s)} · about {format_duration(event.eta_s)} left")

    def _on_succeeded(self, result: Any, counts: dict[int, int]) -> None:
        if self.worker is not None:
            request = self.worker.request
            self.estimates.learn(request.model_dir, request.device, request.preset.backend, request.preset.precision,
                                 result, int(np.prod(self._extent or result.labels.shape)))  # the estimate's unit
        if self.preview is not None:
            self.result_layer = self.preview.finish(result.labels, {META_COUNTS: dict(counts)})
            self.preview = None
        elapsed = time.perf_counter() - self._started
        self.progress.setRange(0, max(result.tiles, 1))
        self.progress.setValue(max(result.tiles, 1))
        self.status.setText(f"Done in {format_duration(elapsed)} ({result.tiles} tiles). "
                            "Review the volumes below; Save segmentation… writes the labels to a file.")
        self.timing.setText("")
        self.review.show_layer(self.result_layer)
        self._end_run("done")

    def _on_cancelled(self) -> None:
        self._discard_preview()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText("Cancelled. No labels were kept.")
        self.timing.setText("")
        self._end_run("cancelled")

    def _on_failed(self, kind: str, message: str) -> None:
        self._discard_preview()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.timing.setText("")
        model_dir = self.worker.request.model_dir if self.worker is not None else None
        self.status.setText("The segmentation did not run (see the message).")
        self._end_run("failed")
        if kind == RunFailure.UNTRUSTED and model_dir is not None:
            self.last_error = message
            question = (f"{message}\n\nThis model's checkpoint holds Python objects besides plain weights. Loading "
                        "it can run code stored in the file. Trust this model folder only if you know where it came "
                        "from.\n\nTrust it and run again?")
            if ask_yes_no(self, "Trust this model?", question):
                self.trust_model(model_dir)
                self.cache.clear()
                self.start_run()
            return
        self._report("The segmentation could not run", message)

    def _end_run(self, outcome: str) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.wait(10_000)  # it has emitted its last signal; let the thread end before dropping it
            worker.deleteLater()
        self._cancelling = False
        self._finishing = False
        self._latest_tile = None
        self._progress_timer.stop()
        self._close_activity()
        self._update_task(outcome)
        self._resume_gc()
        self._update_enabled()
        if self not in _CLOSING:  # a closed panel starts no new timing thread
            self._refresh_estimates()
        self._release_if_closed()
        self.run_finished.emit(outcome)

    def _discard_preview(self) -> None:
        if self.preview is not None:
            self.preview.discard()
            self.preview = None
        self.review.show_layer(self.result_layer if self._result_available() else None)

    def _report(self, title: str, message: str) -> None:
        self.last_error = message
        show_error(self, title, message)

    # ---- slice focus ------------------------------------------------------------------------------
    def _on_slice_changed(self, *_: object) -> None:
        """Ask the engine to run the tiles under the slice on screen first."""
        worker = self.worker
        if worker is None or not self._run_layers or self.viewer.dims.ndisplay != 2:
            return
        layer = self._run_layers[0]
        not_displayed = list(self.viewer.dims.not_displayed)
        if not not_displayed:
            return
        world_axis = not_displayed[0]
        axis = through_plane_axis(layer, world_axis - (self.viewer.dims.ndim - 3))
        position = layer.world_to_data(self.viewer.dims.point)[-3:]
        index = int(np.clip(round(float(position[axis])), 0, layer.data.shape[axis] - 1))
        worker.focus_on_slice(axis, index)

    # ---- saving -----------------------------------------------------------------------------------
    def suggested_save_path(self) -> Path:
        """Where the Save dialog starts: the folder saved to last (else the image's), '<image>_segmentation'."""
        layer = self.result_layer
        run_source = self._run_layers[0].metadata.get("tilewise_source") if self._run_layers else ""
        source = run_source or (layer.metadata.get("tilewise_source") if layer is not None else "") or ""
        base = Path(source) if source else Path.home() / "image"
        remembered = str(self.qsettings.value(SETTINGS_SAVE_FOLDER, "") or "")
        folder = Path(remembered) if remembered and Path(remembered).is_dir() else base.parent
        return folder / f"{strip_suffix(base)}_segmentation.nii.gz"

    def _on_save_clicked(self) -> None:
        self.save_labels()

    def save_labels(self, path: str | Path | None = None) -> bool:
        """Start writing the last result with the input's geometry (asks for a file name when ``path`` is None).

        The file is written on its own thread; ``saved`` is emitted with its path ("" on failure). False when
        nothing was started.
        """
        layer = self.result_layer
        if layer is None or layer not in self.viewer.layers:
            self._report("Nothing to save", "Run a segmentation first.")
            return False
        if self.saving:
            return False
        if path is None:
            chosen, _ = QFileDialog.getSaveFileName(self, "Save segmentation", str(self.suggested_save_path()),
                                                    LABELS_FILTER)
            if not chosen:
                return False
            path = chosen
        target = Path(path)
        if not any(target.name.lower().endswith(s) for s in LABEL_SUFFIXES):
            target = target.with_name(target.name + ".nii.gz")
        try:
            refuse_overwriting_inputs([target], self._open_sources(layer))
        except InputError as error:
            self._report("The segmentation was not saved", str(error))
            return False
        writer = BackgroundTask(_write_file, np.asarray(layer.data), geometry_from_layer(layer), target)
        writer.succeeded.connect(self._on_saved)
        writer.failed.connect(lambda message: self._on_save_failed(target, message))
        self.writer = writer
        self.status.setText(f"Saving to {target}…")
        self._update_enabled()
        writer.start()
        return True

    def _open_sources(self, result: Any) -> list[Path]:
        """The files behind the result and every open image: Save must never write over one of them."""
        sources = [Path(s) for s in result.metadata.get(META_SOURCES, [])]
        return sources + [Path(s) for layer in self.viewer.layers if (s := layer.metadata.get("tilewise_source"))]

    def _finish_saving(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.wait(10_000)
            writer.deleteLater()
        self._update_enabled()
        self._release_if_closed()

    def _on_saved(self, target: Path) -> None:
        self._finish_saving()
        self.qsettings.setValue(SETTINGS_SAVE_FOLDER, str(target.parent))
        self.status.setText(f"Saved to {target}")
        self.saved.emit(str(target))

    def _on_save_failed(self, target: Path, message: str) -> None:
        self._finish_saving()
        self.status.setText("The segmentation was not saved (see the message).")
        self._report("The segmentation could not be saved", f"{target}: {message}")
        self.saved.emit("")


def _write_file(labels: np.ndarray, geometry: Any, target: Path) -> Path:
    write_labels(labels, geometry, target)
    return target

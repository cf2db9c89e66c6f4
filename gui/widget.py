"""The Tilewise dock widget: model, image, speed, Run/Cancel, progress and Save.

It turns clicks into engine runs on a worker thread and tile events into labels-layer updates; it does no numerical
work on the GUI thread.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QSettings, Qt, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QApplication, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QProgressBar, QPushButton,
    QScrollArea, QShortcut, QSizePolicy, QVBoxLayout, QWidget,
)

from tilewise.engine import TilewiseError, write_labels
from tilewise.engine.catalog import ModelInfo
from tilewise.engine.io import strip_suffix

from .contributions import demo_model_dir, read_layers
from .errors import ask_yes_no, show_error
from .geometry import geometry_from_layer, in_patient_axes, through_plane_axis
from .layers import LivePreview
from .model_panel import ModelPanel, label_names
from .settings_panel import SettingsPanel
from .worker import PredictorCache, RunFailure, RunRequest, SegmentationWorker

SETTINGS_TRUSTED = "models/trusted"
IMAGE_FILTER = "Medical images (*.nii.gz *.nii *.nrrd *.mha *.mhd);;All files (*)"
LABELS_FILTER = "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha *.mhd)"


def default_settings() -> QSettings:
    """Where the viewer remembers models and the last preset."""
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


class TilewiseWidget(QWidget):
    """Segment the image layers of a napari viewer with a trained nnU-Net model, watching the tiles fill in."""

    run_finished = Signal(str)  # "done", "cancelled" or "failed"

    def __init__(self, napari_viewer: Any, settings: QSettings | None = None, demo_model: Path | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.qsettings = settings if settings is not None else default_settings()
        self.cache = PredictorCache()
        self.worker: SegmentationWorker | None = None
        self.preview: LivePreview | None = None
        self.result_layer: Any = None
        self._run_layers: list[Any] = []
        self._task_id: Any = None
        self._started = 0.0
        self._cancelling = False
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
        self.open_button = QPushButton(self._icons["open"], "Open image…")
        self.open_button.setToolTip("Open a NIfTI, NRRD or MetaImage file (for a DICOM series use File > Open Folder)")
        image_box = QGroupBox("2. Image")
        image_layout = QVBoxLayout(image_box)
        image_layout.addLayout(self.channel_form)
        image_layout.addWidget(self.open_button)

        # 3. speed
        self.settings_panel = SettingsPanel(self.qsettings)
        speed_box = QGroupBox("3. Speed and quality")
        QVBoxLayout(speed_box).addWidget(self.settings_panel)

        # run, progress, save
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
        self.save_button = QPushButton(self._icons["save"], "Save segmentation…")
        self.save_button.setToolTip("Write the labels as a file with the image's spacing, origin and orientation")
        self.save_button.setEnabled(False)
        run_box = QGroupBox("4. Segment")
        run_layout = QVBoxLayout(run_box)
        run_layout.addWidget(self.run_button)
        run_layout.addWidget(self.progress)
        run_layout.addWidget(self.status)
        run_layout.addWidget(self.timing)
        run_layout.addWidget(self.save_button)

        content = QWidget()
        layout = QVBoxLayout(content)
        for box in (model_box, image_box, speed_box, run_box):
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

        self.model_panel.model_changed.connect(self._on_model_changed)
        self.open_button.clicked.connect(self.open_image_dialog)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.save_button.clicked.connect(lambda: self.save_labels())
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        self._set_running(False)
        self._on_model_changed(self.model_panel.current())

    def _icon_colour(self) -> str:
        try:
            from napari.utils.theme import get_theme

            return get_theme(self.viewer.theme).icon.as_hex()
        except Exception:  # noqa: BLE001 - any theme problem: a neutral grey still shows on light and dark
            return "#909090"

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
        self._refresh_channels()

    def _label_slider_axes(self, layer: Any) -> None:
        """Name the sliders after the anatomical planes they step through, when the image is in patient axes."""
        geometry = getattr(layer, "metadata", {}).get("tilewise_geometry")
        if geometry is not None and self.viewer.dims.ndim == 3 and in_patient_axes(geometry):
            self.viewer.dims.axis_labels = ("axial", "coronal", "sagittal")

    def _refresh_channels(self, *_: object) -> None:
        info = self.model_panel.current()
        names = info.channels if info and info.channels else ["image"]
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
            self.channel_form.addRow(f"{channel}:", combo)
            self.channel_combos.append(combo)

    def select_image(self, *layer_names: str) -> None:
        """Use these layers (by name) as the model's channels, in order."""
        for combo, name in zip(self.channel_combos, layer_names):
            index = combo.findData(name)
            if index < 0:
                raise KeyError(name)
            combo.setCurrentIndex(index)

    def open_image_dialog(self) -> None:
        """Ask for an image file and open it."""
        path, _ = QFileDialog.getOpenFileName(self, "Open an image", "", IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str | Path | list[str | Path]) -> list[Any]:
        """Read an image through the engine and add one layer per channel; errors become a dialog."""
        try:
            layer_data = read_layers(path if isinstance(path, (str, Path)) else [str(p) for p in path])
        except TilewiseError as error:
            self._report("The image could not be opened", str(error))
            return []
        added = [self.viewer.add_image(data, **kwargs) for data, kwargs, _ in layer_data]
        self.select_image(*[layer.name for layer in added][: len(self.channel_combos)])
        return added

    # ---- running ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from Run until the run has ended (done, cancelled or failed)."""
        return self.worker is not None

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
        if self.running:
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
        self._discard_preview()
        self.preview = LivePreview(self.viewer, f"{layers[0].name} segmentation",
                                   tuple(int(s) for s in layers[0].data.shape), geometry,
                                   sorted(label_names(info)))
        self._run_layers = layers
        self.viewer.layers.selection.active = layers[0]
        worker = SegmentationWorker(request, self.cache)
        worker.stage.connect(self._on_stage)
        worker.tile.connect(self._on_tile)
        worker.succeeded.connect(self._on_succeeded)
        worker.cancelled.connect(self._on_cancelled)
        worker.failed.connect(self._on_failed)
        self.worker = worker
        self.last_error = None
        self._cancelling = False
        self._started = time.perf_counter()
        self.progress.setRange(0, 0)  # busy until the first tile reports the total
        self.timing.setText("")
        self._set_running(True)
        self._register_task(worker)
        self._on_slice_changed()
        worker.start()
        return True

    def cancel_run(self) -> None:
        """Stop the current run before its next batch; its partial labels are removed."""
        if self.worker is None or self._cancelling:
            return
        self._cancelling = True
        self.worker.cancel()
        self.status.setText("Cancelling: waiting for the current tile to finish…")
        self.run_button.setEnabled(False)

    def shutdown(self) -> None:
        """Cancel a run and wait for its thread (the window is closing)."""
        worker = self.worker
        if worker is not None:
            for signal in (worker.stage, worker.tile, worker.succeeded, worker.cancelled, worker.failed):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass
            worker.stop_and_wait()
            self.worker = None

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

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(True)
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
        for panel in (self.model_panel, self.settings_panel, self.open_button):
            panel.setEnabled(not running)
        for combo in self.channel_combos:
            combo.setEnabled(not running)

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
        if self.preview is None or self.worker is None:
            return
        self.preview.add(event.input_box, event.labels)
        self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        if not self._cancelling:
            if event.done < event.total:
                self.status.setText(f"Segmenting: tile {event.done} of {event.total}. The slice on screen runs first.")
            else:
                self.status.setText("Finishing: putting the labels back on the image grid…")
        self.timing.setText(f"Elapsed {format_duration(event.elapsed_s)} · about {format_duration(event.eta_s)} left")

    def _on_succeeded(self, result: Any) -> None:
        if self.preview is not None:
            self.result_layer = self.preview.finish(result.labels)
            self.preview = None
        elapsed = time.perf_counter() - self._started
        self.progress.setRange(0, max(result.tiles, 1))
        self.progress.setValue(max(result.tiles, 1))
        self.status.setText(f"Done in {format_duration(elapsed)} ({result.tiles} tiles). "
                            "Use Save segmentation… to write it to a file.")
        self.timing.setText("")
        self.save_button.setEnabled(True)
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
        self._update_task(outcome)
        self._set_running(False)
        self.run_finished.emit(outcome)

    def _discard_preview(self) -> None:
        if self.preview is not None:
            self.preview.discard()
            self.preview = None

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
    def save_labels(self, path: str | Path | None = None) -> Path | None:
        """Write the last result with the input's geometry (asks for a file name when ``path`` is None)."""
        layer = self.result_layer
        if layer is None or layer not in self.viewer.layers:
            self._report("Nothing to save", "Run a segmentation first.")
            return None
        if path is None:
            source = layer.metadata.get("tilewise_source") or ""
            run_source = self._run_layers[0].metadata.get("tilewise_source") if self._run_layers else ""
            base = Path(run_source) if run_source else Path(source) if source else Path.home() / "image"
            suggestion = base.with_name(f"{strip_suffix(base)}_segmentation.nii.gz")
            chosen, _ = QFileDialog.getSaveFileName(self, "Save segmentation", str(suggestion), LABELS_FILTER)
            if not chosen:
                return None
            path = chosen
        target = Path(path)
        if not any(target.name.lower().endswith(s) for s in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")):
            target = target.with_name(target.name + ".nii.gz")
        try:
            write_labels(np.asarray(layer.data), geometry_from_layer(layer), target)
        except (OSError, ValueError, TilewiseError) as error:
            self._report("The segmentation could not be saved", f"{target}: {error}")
            return None
        self.status.setText(f"Saved to {target}")
        return target

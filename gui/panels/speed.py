"""Speed preset and the Advanced section (folds, mirroring, tile step, precision, device, engine).

For a TotalSegmentator task the tile overlap and mirroring are the task's own (its models run as TotalSegmentator
runs them): those fields show the task's values, unavailable, and the preset sets the rest (precision, engine,
tile skipping)."""
from __future__ import annotations

import html

import torch
from qtpy.QtCore import QEvent, QSettings, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible
from tilewise.engine import Estimate, Preset, Span, load_presets

from ..controllers.estimate_priors import ShownEstimates, TaskNote
from ..controllers.worker import RunChoice
from .common import ElidingComboBox, SteadyLabel

SETTINGS_PRESET = "run/preset"
DEFAULT_PRESET = "fast"
ESTIMATE_TIP = ("Loading the model, converting folds for OpenVINO the first time, preparing the image, tiles x "
                "passes x the time of one pass, and writing the result, as timed on this computer; a range until a "
                "run has timed every step, refined after each")
"""What every estimate adds up (the start of its tooltip)."""
PRECISIONS: tuple[tuple[str, str], ...] = (
    ("reduced", "Reduced (automatic)"),
    ("fp32", "Full (fp32)"),
    ("bf16", "Reduced: bf16"),
    ("fp16", "Reduced: fp16"),
)


def overlap_percent(tile_step: float) -> int:
    """How much neighbouring tiles overlap, in percent, at nnU-Net's ``tile_step`` (0.5 -> 50, 1.0 -> 0)."""
    return round((1.0 - tile_step) * 100)


def describe_seconds(seconds: float) -> str:
    """'about 40 s', 'about 3 min', 'about 1 h 10 min': rounded the way a person would say it."""
    if seconds < 1.5:
        return "about 1 s"
    if seconds < 60:
        return f"about {_round_seconds(seconds)} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"about {round(minutes)} min"
    return f"about {int(minutes // 60)} h {round(minutes % 60)} min"


def _round_seconds(seconds: float) -> int:
    return max(round(seconds / 5) * 5 if seconds > 20 else round(seconds), 1)


def describe_span(span: Span) -> str:
    """One figure for a measured span ('about 40 s'), else a range: 'about 5-15 s', 'about 1-3 min'."""
    low, high = describe_seconds(span.low), describe_seconds(span.high)
    if span.measured or low == high:
        return describe_seconds(span.mid)
    if span.high < 90:
        return f"about {_round_seconds(span.low)}-{_round_seconds(span.high)} s"
    if span.high < 3600 and span.low >= 45:
        return f"about {round(span.low / 60)}-{round(span.high / 60)} min"
    return f"{low} to {high.removeprefix('about ')}"


def describe_estimate(estimate: Estimate, total: Span, load: tuple[float, int] | None = None) -> str:
    """The estimate for the chosen settings as the Speed box says it: the time (``total``: the figure shown for it),
    '(busy)' when the computer is busy now (``load``: load average and cores), and the first run's conversions;
    the stages behind it are in :func:`describe_stages` (the tooltip), so the text stays short."""
    busy = " (busy)" if load is not None else ""
    text = f"On this computer, now{busy}: <b>{describe_span(total)}</b>."
    converting = estimate.stages["convert"]
    folds = "fold" if estimate.conversions == 1 else "folds"
    if estimate.conversions and converting.low == 0 < converting.high:
        text += f" First run may convert {estimate.conversions} {folds} for OpenVINO: {describe_span(converting)}."
    elif estimate.conversions:
        text += f" First run converts {estimate.conversions} {folds} for OpenVINO: {describe_span(converting)}."
    return text


TASK_TIP = ("A TotalSegmentator task runs several models, each on the image resampled to the task's spacing; "
            "Tilewise does not estimate that yet. The progress bar counts the tiles of all its models.")
TASK_FIELD_TIP = "A TotalSegmentator task runs with its own tile overlap and without mirroring, as TotalSegmentator does"


def describe_task(task: TaskNote) -> str:
    """What the Speed box says for a TotalSegmentator task: no estimate yet, and how long its last run took."""
    text = f"No time estimate for TotalSegmentator's tasks yet ({html.escape(task.name)})."
    if task.last_s is not None:
        text += f" Its last run here took <b>{describe_seconds(task.last_s)}</b> (loading its models not counted)."
    return text


def describe_stages(estimate: Estimate | None, total: Span | None, skips_tiles: bool,
                    load: tuple[float, int] | None) -> str:
    """The estimate's tooltip: what it adds up (tiles x passes, loading), why it is a range, and the load that
    widened it."""
    parts = [ESTIMATE_TIP + "."]
    if estimate is not None and total is not None:
        passes = "pass" if estimate.passes_per_tile == 1 else "passes"
        tiles = (f"{estimate.tiles} tiles x {estimate.passes_per_tile} {passes}: "
                 f"{describe_span(estimate.stages['sliding_window'])}")
        parts.append(tiles + (", fewer when tiles outside the body are skipped." if skips_tiles else "."))
        loading = estimate.stages["load"]
        parts.append("The model is loaded already." if loading.high == 0 else f"Loading: {describe_span(loading)}.")
        if not total.measured:
            parts.append("A range until a run is timed here.")
    if load is not None:
        parts.append(f"This computer is busy now (load {load[0]:.1f} on {load[1]} cores): the upper end is raised "
                     "by as much.")
    return " ".join(parts)


def available_devices() -> list[tuple[str, str]]:
    """(engine name, description) of every device this computer can run on, the automatic choice first."""
    devices: list[tuple[str, str]] = []
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        devices.append(("cuda", f"GPU: {properties.name} ({properties.total_memory / 2**30:.0f} GB)"))
    if torch.backends.mps.is_available():
        devices.append(("mps", "Apple GPU (MPS)"))
    threads = torch.get_num_threads()
    devices.append(("cpu", f"CPU ({threads} thread{'s' if threads != 1 else ''})"))
    return [("auto", f"Automatic: {devices[0][1]}")] + devices


def available_backends() -> list[tuple[str, str]]:
    """(engine name, description) of the forward-pass engines installed here, the automatic choice first."""
    import importlib.util

    has_openvino = importlib.util.find_spec("openvino") is not None
    backends = [("auto", "Automatic: best for the device"), ("torch", "PyTorch")]
    if has_openvino:
        backends.append(("openvino", "OpenVINO (fast on Intel and AMD CPUs)"))
    return backends


class SpeedPanel(QWidget):
    """A preset list with each preset's summary, and the fields of the chosen preset under Advanced."""

    changed = Signal()

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.presets = load_presets()
        self._folds: list[str] = []
        self._updating = False
        self._task_step: float | None = None
        """The chosen TotalSegmentator task's tile step (None: no task chosen)."""
        self._own_fields: tuple[bool, int] = (False, 0)
        """Mirroring and overlap as they were before a task was chosen (given back when a model is chosen)."""
        self.totals: dict[str, Span] = {}
        """The time shown after each preset's name (for scripts and tests)."""

        self.preset = ElidingComboBox()
        for name, preset in self.presets.items():
            self.preset.addItem(preset.label, name)
            self.preset.setItemData(self.preset.count() - 1, preset.summary, 3)  # 3 = Qt.ToolTipRole
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: palette(mid);")
        self.estimate = SteadyLabel()
        self.estimate.setToolTip(describe_stages(None, None, False, None))

        self.fold_box = QWidget()
        self.fold_layout = QHBoxLayout(self.fold_box)
        self.fold_layout.setContentsMargins(0, 0, 0, 0)
        folds_title = QLabel("Folds:")
        folds_title.setToolTip("nnU-Net trains one network per fold; several folds are averaged (slower, a little "
                               "more accurate)")
        self.fold_layout.addWidget(folds_title)
        self.fold_checks: list[QCheckBox] = []
        self.mirroring = QCheckBox("Average mirrored copies (mirroring)")
        self.mirroring.setToolTip("Test-time augmentation: also predict mirrored copies of the image and average "
                                  "them. A little more accurate, up to 8x slower in 3D")
        self.overlap = QSpinBox()
        self.overlap.setRange(0, 90)
        self.overlap.setSingleStep(5)
        self.overlap.setSuffix(" %")
        self.overlap.setToolTip("How much neighbouring tiles overlap: 50 % is nnU-Net's default (each voxel seen by "
                                "several tiles, averaged); 0 % runs the fewest tiles (fastest)")
        self.precision = ElidingComboBox()
        for value, text in PRECISIONS:
            self.precision.addItem(text, value)
        self.precision.setToolTip("Numeric precision of the network: full precision gives nnU-Net's exact output; "
                                  "reduced precision (bf16 or fp16, whichever this device runs fast) is faster on "
                                  "most GPUs and recent CPUs")
        self.device = ElidingComboBox()
        for value, text in available_devices():
            self.device.addItem(text, value)
        self.device.setToolTip("Where the network runs")
        self.backend = ElidingComboBox()
        for value, text in available_backends():
            self.backend.addItem(text, value)
        self.backend.setToolTip("The engine that runs the network, for every preset. Automatic uses PyTorch on a GPU "
                                "and OpenVINO (usually 2-3x faster than PyTorch) on a CPU when it is installed")

        self.nnunet_exact = QCheckBox("Exact nnU-Net output")
        self.nnunet_exact.setToolTip("Voxel for voxel what nnUNetv2_predict_from_modelfolder writes: PyTorch, one "
                                     "tile at a time, nnU-Net's float16 sums and its own preprocessing and export. "
                                     "Slower than the presets; folds, mirroring and tile step still apply")

        self._field_tips = {self.mirroring: self.mirroring.toolTip(), self.overlap: self.overlap.toolTip()}
        self.overlap.setMinimumWidth(100)
        overlap_row = QWidget()
        overlap_layout = QHBoxLayout(overlap_row)
        overlap_layout.setContentsMargins(0, 0, 0, 0)
        overlap_layout.addWidget(QLabel("Overlap between tiles:"))
        overlap_layout.addWidget(self.overlap, 1)
        advanced_form = QFormLayout()  # rows of their own where a long title would widen the form past a narrow dock
        advanced_form.setContentsMargins(0, 0, 0, 0)
        advanced_form.addRow(self.fold_box)
        advanced_form.addRow(self.mirroring)
        advanced_form.addRow(overlap_row)
        advanced_form.addRow("Precision:", self.precision)
        advanced_form.addRow("Device:", self.device)
        advanced_form.addRow("Engine:", self.backend)
        advanced_form.addRow(self.nnunet_exact)
        advanced_content = QWidget()
        advanced_content.setLayout(advanced_form)
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(advanced_content)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        top = QFormLayout()
        top.addRow("Speed:", self.preset)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.estimate)
        layout.addWidget(self.advanced)

        self.preset.currentIndexChanged.connect(self._on_preset_changed)
        for signal in (self.mirroring.toggled, self.overlap.valueChanged, self.precision.currentIndexChanged,
                       self.device.currentIndexChanged, self.backend.currentIndexChanged, self.nnunet_exact.toggled):
            signal.connect(self._on_field_changed)
        remembered = str(self.settings.value(SETTINGS_PRESET, DEFAULT_PRESET) or DEFAULT_PRESET)
        index = self.preset.findData(remembered)
        self.preset.setCurrentIndex(index if index >= 0 else max(self.preset.findData(DEFAULT_PRESET), 0))
        self._on_preset_changed()

    # ---- public ---------------------------------------------------------------------------------
    def current_preset(self) -> Preset:
        """The chosen preset, before the Advanced fields are applied."""
        return self.presets[self.preset.currentData()]

    def select_preset(self, name: str) -> None:
        """Choose a preset by name (this resets the Advanced fields to its values)."""
        index = self.preset.findData(name)
        if index < 0:
            raise KeyError(name)
        self.preset.setCurrentIndex(index)

    def show_estimates(self, shown: ShownEstimates) -> None:
        """Show an estimated time after each preset's name, and under the summary the estimate for the chosen
        settings, stage by stage, or a status (such as 'Estimating…') when there is none. A refined estimate takes
        the place of the earlier one: the text below keeps its height (it never moves the controls under it) until
        no estimate is shown. For a TotalSegmentator task it says that there is no estimate yet."""
        self._show_task_settings(shown.task)
        self.totals = dict(shown.totals)
        for index in range(self.preset.count()):
            preset = self.presets[self.preset.itemData(index)]
            total = shown.totals.get(preset.name)
            self.preset.setItemText(index, preset.label if total is None else
                                    f"{preset.label}  ({describe_span(total)})")
        chosen, total = shown.chosen, shown.chosen_total
        current = describe_estimate(chosen, total, shown.load) if chosen is not None and total is not None else \
            shown.status
        if shown.task is not None:
            current = describe_task(shown.task)
        if not shown.totals:
            self.estimate.release()
        self.estimate.setText(current)
        self.estimate.setToolTip(TASK_TIP if shown.task is not None else
                                 describe_stages(chosen, total, self.choice().preset.skip_empty_tiles, shown.load))
        self.estimate.setVisible(bool(current))

    def set_available_folds(self, folds: list[str]) -> None:
        """Show one check box per trained fold of the chosen model."""
        self._folds = list(folds)
        for check in self.fold_checks:
            self.fold_layout.removeWidget(check)
            check.deleteLater()
        self.fold_checks = []
        for fold in self._folds:
            check = QCheckBox(fold)
            check.setToolTip(f"Use the network trained on fold {fold}; several folds are averaged")
            check.toggled.connect(self._on_field_changed)
            self.fold_layout.addWidget(check)
            self.fold_checks.append(check)
        self.fold_layout.addStretch(1)
        self._apply_preset_folds()

    def choice(self) -> RunChoice:
        """The preset with the Advanced fields applied, the folds to use and the device."""
        preset = self.current_preset().with_overrides(
            mirroring=self.mirroring.isChecked(),
            tile_step=self.tile_step(),
            precision=self.precision.currentData(),
            backend=self.backend.currentData(),
        )
        chosen = tuple(c.text() for c in self.fold_checks if c.isChecked())
        folds = chosen if chosen and self.fold_checks else None
        return RunChoice(preset=preset, folds=folds, device=str(self.device.currentData()),
                         nnunet_exact=self.nnunet_exact.isChecked())

    def tile_step(self) -> float:
        """The distance between neighbouring tiles as a fraction of the tile (nnU-Net's step), from the overlap."""
        return round(1.0 - self.overlap.value() / 100.0, 4)

    def is_customised(self) -> bool:
        """True when an Advanced field differs from the chosen preset (a task's own overlap and mirroring aside)."""
        preset = self.current_preset()
        task = self._task_step is not None
        return (
            (not task and self.mirroring.isChecked() != preset.mirroring)
            or (not task and self.overlap.value() != overlap_percent(preset.tile_step))
            or self.precision.currentData() != preset.precision
            or self.nnunet_exact.isChecked()
            or tuple(c.text() for c in self.fold_checks if c.isChecked()) != self._preset_folds(preset)
        )

    # ---- internals ------------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt override
        """A run has ended (the panel is enabled again): the estimate text may shrink now, as the dock changes
        anyway (Review opens); while the person reads it, a refined text never moves the controls below."""
        super().changeEvent(event)
        if event.type() == QEvent.EnabledChange and self.isEnabled():
            self.estimate.release()

    def _preset_folds(self, preset: Preset) -> tuple[str, ...]:
        return tuple(self._folds[: preset.fold_count] if preset.fold_count else self._folds)

    def _apply_preset_folds(self) -> None:
        wanted = self._preset_folds(self.current_preset())
        self._updating = True
        for check in self.fold_checks:
            check.setChecked(check.text() in wanted)
        self._updating = False
        self._on_field_changed()

    def _show_task_settings(self, task: TaskNote | None) -> None:
        """A task chosen: mirroring off and the task's overlap, both unavailable; a model chosen again: the fields
        as they were."""
        step = task.step if task is not None else None
        if step == self._task_step:
            return
        self._updating = True
        if self._task_step is None:
            self._own_fields = (self.mirroring.isChecked(), self.overlap.value())
        mirroring, overlap = (False, overlap_percent(step)) if step is not None else self._own_fields
        self.mirroring.setChecked(mirroring)
        self.overlap.setValue(overlap)
        self._task_step = step
        self._updating = False
        for field in (self.mirroring, self.overlap):
            field.setEnabled(step is None)
            field.setToolTip(TASK_FIELD_TIP if step is not None else self._field_tips[field])
        self._on_field_changed()

    def _on_preset_changed(self, *_: object) -> None:
        preset = self.current_preset()
        self.settings.setValue(SETTINGS_PRESET, preset.name)
        self._updating = True
        if self._task_step is None:  # a task keeps its own overlap and no mirroring
            self.mirroring.setChecked(preset.mirroring)
            self.overlap.setValue(overlap_percent(preset.tile_step))
        index = self.precision.findData(preset.precision)
        self.precision.setCurrentIndex(max(index, 0))
        self._updating = False
        self._apply_preset_folds()

    def _on_field_changed(self, *_: object) -> None:
        if self._updating:
            return
        exact = self.nnunet_exact.isChecked()
        self.precision.setEnabled(not exact)  # nnU-Net's own precision and engine: these do not apply
        self.backend.setEnabled(not exact)
        preset = self.current_preset()
        text = preset.summary
        if self._task_step is not None:  # the preset's folds, overlap and mirroring do not apply: say what does
            skips = " and skips tiles outside the body" if preset.skip_empty_tiles else ""
            text = (f"TotalSegmentator's task runs its own folds, tiles overlapping by "
                    f"{overlap_percent(self._task_step)} %, no mirroring. {preset.label} sets the precision{skips}.")
        if self.is_customised():
            text += " <b>Changed under Advanced.</b>"
        self.summary.setText(text)
        self.changed.emit()

"""Choosing a trained nnU-Net model: the models found on this computer, folders added with Browse, and the demo."""
from __future__ import annotations

import html
import json
from pathlib import Path

from qtpy.QtCore import QSettings, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from tilewise.engine import ModelInfo, TaskInfo, default_search_roots, describe_model, find_models, task_name

from ..colors import display_name, label_color
from ..task_models import (
    TaskModelInfo,
    list_text,
    missing_package_hint,
    plain_models,
    runnable_tasks,
    task_model,
)
from .common import breakable
from .dialogs import show_error
from .elided import ModelComboBox

SETTINGS_EXTRA = "models/extra_folders"
SETTINGS_LAST = "models/last"
SETTINGS_FAST = "models/task_fast"
FAST_TEXT = "Fast (3 mm model)"
FAST_TIP = ("TotalSegmentator's fast mode (--fast): one model on the image resampled to 3 mm instead of its 1.5 mm "
            "models. Much quicker; coarser outlines, and small structures may be missed")
TASK_LABELS_SHOWN = 8
"""How many of a task's structures the description names (all of them are in its tooltip)."""


def label_names(info: ModelInfo) -> dict[int, str]:
    """Foreground label value -> name, by the engine's one rule (region models: values of regions_class_order)."""
    return {value: name for value, name in info.label_names.items() if value != 0}


def configuration_of(info: ModelInfo) -> str:
    """The model's nnU-Net configuration ('3d_fullres', ...), also for a folder not named Trainer__Plans__config.

    Such a folder (the demo model's is 'model') says it in each fold's debug.json, as nnUNetv2_train writes it;
    else a plans file with a single configuration does.
    """
    if info.configuration != "?":
        return info.configuration
    for fold in info.folds:
        try:
            debug = json.loads((info.path / f"fold_{fold}" / "debug.json").read_text())
        except (OSError, ValueError):
            continue
        value = debug.get("configuration_name") or debug.get("configuration") if isinstance(debug, dict) else None
        if isinstance(value, str) and value:
            return value
    try:
        configurations = list(json.loads((info.path / "plans.json").read_text()).get("configurations", {}))
    except (OSError, ValueError, AttributeError):
        configurations = []
    return configurations[0] if len(configurations) == 1 else "?"


def _icon(name: str):
    import qtawesome

    return qtawesome.icon(name)


class ModelPanel(QWidget):
    """A model list with a Browse button and a description of the chosen model.

    A name too long for the list shows with '…' in the middle; its tooltip has the whole name and the folder.
    TotalSegmentator's installed tasks are entries of their own ('totalseg:total'), their part folders are not; a
    task with a fast model offers it with a box under the list.
    """

    model_changed = Signal(object)  # ModelInfo or None
    summary_changed = Signal(str)   # the chosen model's name in the list; "" when there is none (the dock's step)

    def __init__(self, settings: QSettings, demo_model: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.demo_model = demo_model
        self._models: list[ModelInfo] = []
        self._tasks: list[TaskInfo] = []
        self._task_models: dict[tuple[str, bool], TaskModelInfo | None] = {}

        self.combo = ModelComboBox()
        self.browse = QPushButton(_icon("fa5s.folder-open"), "Browse…")
        self.browse.setToolTip("Add a trained nnU-Net model folder (the one that holds plans.json and fold_0)")
        row = QHBoxLayout()
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse)
        self.fast = QCheckBox(FAST_TEXT)
        self.fast.setToolTip(FAST_TIP)
        self.fast.setChecked(str(self.settings.value(SETTINGS_FAST, "false")).lower() == "true")
        self.install_hint = QLabel()
        """What to install when TotalSegmentator's weights are here but not its package (hidden otherwise)."""
        self.install_hint.setWordWrap(True)
        self.install_hint.setStyleSheet("color: #f0a030;")  # amber: worth reading, not an error

        self.dataset = QLabel()
        self.configuration = QLabel()
        self.folds = QLabel()
        self.channels = QLabel()
        self.labels = QLabel()
        for label in (self.dataset, self.configuration, self.folds, self.channels, self.labels):
            label.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Dataset:", self.dataset)
        form.addRow("Configuration:", self.configuration)
        form.addRow("Trained folds:", self.folds)
        form.addRow("Input channels:", self.channels)
        form.addRow("Labels:", self.labels)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.fast)
        layout.addWidget(self.install_hint)
        layout.addLayout(form)

        self.combo.currentIndexChanged.connect(self._on_index_changed)
        self.fast.toggled.connect(self._on_fast_toggled)
        self.browse.clicked.connect(self.browse_for_model)
        self.refresh()

    # ---- the list -------------------------------------------------------------------------------
    def _extra_folders(self) -> list[str]:
        value = self.settings.value(SETTINGS_EXTRA, [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def refresh(self) -> None:
        """Search the default places and the remembered folders again."""
        found: dict[str, ModelInfo] = {}
        if self.demo_model is not None and (info := describe_model(self.demo_model)) is not None:
            found[str(info.path)] = info
        roots = default_search_roots() + [Path(f) for f in self._extra_folders()]
        for info in plain_models(roots):
            found.setdefault(str(info.path), info)
        self._models = list(found.values())
        self._tasks = runnable_tasks()
        self._task_models = {}
        hint = missing_package_hint(self._models)
        self.install_hint.setText(hint)
        self.install_hint.setVisible(bool(hint))
        remembered = str(self.settings.value(SETTINGS_LAST, "") or "")
        self.combo.blockSignals(True)
        self.combo.clear()
        for info in self._models:
            demo = " (demo)" if self.demo_model is not None and info.path == self.demo_model else ""
            self.combo.addItem(f"{info.dataset} · {configuration_of(info)}{demo}", str(info.path))
            self.combo.setItemData(self.combo.count() - 1, str(info.path), 3)  # 3 = Qt.ToolTipRole
        for task in self._tasks:
            self.combo.addItem(list_text(task), task.name)
            self.combo.setItemData(self.combo.count() - 1, f"TotalSegmentator's {task_name(task.name)} task: "
                                   f"{task.structures} structures; {len(task.folders)} nnU-Net model(s) run as one", 3)
        if not self._models and not self._tasks:
            self.combo.addItem("No model found: use Browse… to add one", "")
        index = self.combo.findData(remembered) if remembered else -1
        self.combo.setCurrentIndex(max(index, 0))
        self.combo.blockSignals(False)
        self._on_index_changed()

    def browse_for_model(self) -> None:
        """Ask for a folder and add the models in it."""
        folder = QFileDialog.getExistingDirectory(self, "Choose a trained nnU-Net model folder")
        if folder:
            self.add_folder(Path(folder))

    def add_folder(self, folder: Path) -> ModelInfo | None:
        """Remember ``folder`` (a model folder or a folder holding models) and select the first model in it."""
        folder = Path(folder).expanduser().resolve()
        info = describe_model(folder)
        models = [info] if info is not None else find_models([folder])
        if not models:
            show_error(self, "Not a model folder",
                       f"{folder}: no trained nnU-Net model found. A model folder holds dataset.json, plans.json "
                       "and fold_0/checkpoint_final.pth (as nnUNetv2_train leaves it).")
            return None
        extra = self._extra_folders()
        if str(folder) not in extra:
            self.settings.setValue(SETTINGS_EXTRA, extra + [str(folder)])
        self.settings.setValue(SETTINGS_LAST, str(models[0].path))
        self.refresh()
        return self.current()

    def select(self, model_dir: Path) -> ModelInfo | None:
        """Select the model at ``model_dir``, adding it to the list if needed."""
        index = self.combo.findData(str(Path(model_dir).expanduser().resolve()))
        if index < 0:
            return self.add_folder(Path(model_dir))
        self.combo.setCurrentIndex(index)
        return self.current()

    def select_task(self, name: str, fast: bool = False) -> TaskModelInfo | None:
        """Select TotalSegmentator's task ``name`` ('totalseg:total'), with its fast model when ``fast``; None when it
        is not in the list."""
        index = self.combo.findData(name)
        if index < 0:
            return None
        self.fast.blockSignals(True)
        self.fast.setChecked(fast)
        self.fast.blockSignals(False)
        if index == self.combo.currentIndex():
            self._on_index_changed()
        else:
            self.combo.setCurrentIndex(index)
        current = self.current()
        return current if isinstance(current, TaskModelInfo) else None

    def current(self) -> ModelInfo | None:
        """The chosen model (a :class:`TaskModelInfo` for a TotalSegmentator task), or None."""
        path = self.combo.currentData()
        task = next((t for t in self._tasks if t.name == path), None)
        if task is not None:
            return self._task_model(task, bool(task.fast) and self.fast.isChecked())
        return next((m for m in self._models if str(m.path) == path), None)

    def _task_model(self, task: TaskInfo, fast: bool) -> TaskModelInfo | None:
        """Task ``task`` as a model (resolved once per list refresh)."""
        key = (task.name, fast)
        if key not in self._task_models:
            self._task_models[key] = task_model(task, fast)
        return self._task_models[key]

    # ---- the description ------------------------------------------------------------------------
    def _on_index_changed(self, *_: object) -> None:
        info = self.current()
        self._show_fast_choice(info)
        self.combo.setToolTip(f"{self.combo.currentText()}\n{info.path}" if info is not None else
                              "Trained nnU-Net models found under $nnUNet_results, TotalSegmentator's folder, "
                              "and folders you added")
        if info is None:
            for label in (self.dataset, self.configuration, self.folds, self.channels, self.labels):
                label.setText("–")
        else:
            self.settings.setValue(SETTINGS_LAST, str(self.combo.currentData()))
            self.dataset.setText(breakable(html.escape(info.dataset)))
            self.dataset.setToolTip(str(info.path))
            self.configuration.setText(configuration_of(info))
            self.folds.setText(", ".join(info.folds))
            self.channels.setText(", ".join(info.channels) or "–")
            self.labels.setText(self.labels_html(info))
            self.labels.setToolTip("")
            if isinstance(info, TaskModelInfo):
                self._describe_task(info)
        self.model_changed.emit(info)
        self.summary_changed.emit(self.summary())

    def _show_fast_choice(self, info: ModelInfo | None) -> None:
        """The fast-model box: shown for a task that has a fast model, usable only when that model is installed."""
        task = info.task if isinstance(info, TaskModelInfo) else None
        self.fast.setVisible(task is not None and task.fast is not None)
        installed = bool(task is not None and task.fast)
        self.fast.setEnabled(installed)
        self.fast.setText(FAST_TEXT if installed or task is None else f"{FAST_TEXT}: not installed")

    def _on_fast_toggled(self, checked: bool) -> None:
        self.settings.setValue(SETTINGS_FAST, bool(checked))
        if isinstance(self.current(), TaskModelInfo):
            self._on_index_changed()

    def _describe_task(self, info: TaskModelInfo) -> None:
        """A task's rows: what it runs, at which spacing, its folds, and its structures (all in the tooltip)."""
        task = f"TotalSegmentator's {task_name(info.name.split()[0])} task"
        runs = f"{info.parts} nnU-Net models run as one" if info.parts > 1 else \
            ("its fast model" if info.fast else "one nnU-Net model")
        self.dataset.setText(breakable(html.escape(f"{task}: {runs}", quote=False)))
        spacing = f", the image resampled to {info.spacing_mm:g} mm" if info.spacing_mm else ""
        self.configuration.setText(f"{info.configuration}{spacing}")
        self.folds.setText(", ".join(info.spec.main.folds) + " (the task's own)")
        names = [display_name(name) for value, name in sorted(label_names(info).items())]
        shown = ", ".join(names[:TASK_LABELS_SHOWN]) + (", …" if len(names) > TASK_LABELS_SHOWN else "")
        self.labels.setText(html.escape(f"{len(names)} structures: {shown}", quote=False))
        self.labels.setToolTip(f"<p>{html.escape(', '.join(names))}</p>")  # rich text: Qt wraps it

    def summary(self) -> str:
        """The chosen model's name as the list shows it, a task's as ``-m`` takes it ("" when none is chosen)."""
        info = self.current()
        if isinstance(info, TaskModelInfo):
            return info.name
        return self.combo.currentText() if info is not None else ""

    @staticmethod
    def labels_html(info: ModelInfo) -> str:
        """The model's labels, each after a square of the colour it is drawn in."""
        items = [f'<span style="color:{label_color(v)}">&#9632;</span>&nbsp;{html.escape(display_name(name))}'
                 for v, name in sorted(label_names(info).items())]
        return "<br>".join(items) or "–"

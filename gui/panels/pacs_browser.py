"""Open from PACS…: the configured servers, a search (patient name or ID, a date range, a modality), the studies
found, the chosen study's series, and Open with a progress bar and Cancel.

A view only: it emits what the person asks for and shows what it is given (:class:`~..flows.pacs.PacsFlow` connects
it to the PACS controller). Problems are one plain sentence under the lists, never a dialog over the dialog.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QDate, Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from tilewise import engine

if TYPE_CHECKING:
    from tilewise.engine import SeriesInfo, StudyInfo, StudySearch

STUDY_COLUMNS = ("Patient", "Patient ID", "Date", "Modality", "Description", "Series", "Images")
SERIES_COLUMNS = ("No.", "Modality", "Description", "Images")
DATE_RANGES = (("Any date", None), ("Today", 0), ("Last 7 days", 7), ("Last 30 days", 30),
               ("Last 12 months", 365))
MODALITIES = ("CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA")


def shown_date(text: str) -> str:
    """A DICOM date (YYYYMMDD) as the screen shows it: '2026-12-01' ('' stays '')."""
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _item(text: str, number: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemIsSelectable | Qt.ItemIsEnabled)
    if number:
        item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
    return item


def _table(columns: tuple[str, ...], stretch: int) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    table.setSelectionMode(QAbstractItemView.SingleSelection)
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.setShowGrid(True)  # no alternating rows: napari's theme makes them white, with white text
    table.setWordWrap(False)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeToContents)
    header.setSectionResizeMode(stretch, QHeaderView.Stretch)
    return table


class PacsBrowser(QDialog):
    """Find a study on a configured PACS, choose one of its series and open it."""

    search_requested = Signal(str, object)   # server name, StudySearch
    study_chosen = Signal(str, str)          # server name, Study Instance UID
    open_requested = Signal(str, object)     # server name, SeriesInfo
    cancel_requested = Signal()
    settings_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open from PACS")
        self._studies: list[StudyInfo] = []
        self._series: list[SeriesInfo] = []
        self._pulling = False
        self.server = QComboBox()
        self.server.setMinimumContentsLength(16)
        self.settings_button = QPushButton("Servers…")
        self.settings_button.setToolTip("Add, change or remove PACS servers")
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("Patient name or ID")
        self.patient.setClearButtonEnabled(True)
        self.dates = QComboBox()
        for text, days in DATE_RANGES:
            self.dates.addItem(text, days)
        self.modality = QComboBox()
        self.modality.addItem("Any modality", "")
        for modality in MODALITIES:
            self.modality.addItem(modality, modality)
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        self.studies = _table(STUDY_COLUMNS, STUDY_COLUMNS.index("Description"))
        self.series = _table(SERIES_COLUMNS, SERIES_COLUMNS.index("Description"))
        self.progress = QProgressBar()
        self.progress.setFormat("%v of %m images")
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.open_button = QPushButton("Open")
        self.open_button.setToolTip("Copy the chosen series from the PACS to this computer and open it")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop copying the series; nothing is opened")
        self.close_button = QPushButton("Close")
        self._lay_out()
        self._wire()
        self.show_pulling(False)

    def _lay_out(self) -> None:
        top = QHBoxLayout()
        top.addWidget(QLabel("Server:"))
        top.addWidget(self.server, 1)
        top.addWidget(self.settings_button)
        search = QHBoxLayout()
        search.addWidget(self.patient, 2)
        search.addWidget(self.dates)
        search.addWidget(self.modality)
        search.addWidget(self.search_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.progress, 1)
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(search)
        layout.addWidget(QLabel("Studies"))
        layout.addWidget(self.studies, 3)
        layout.addWidget(QLabel("Series of the chosen study"))
        layout.addWidget(self.series, 2)
        layout.addWidget(self.status)
        layout.addLayout(buttons)

    def _wire(self) -> None:
        self.search_button.clicked.connect(self.request_search)
        self.patient.returnPressed.connect(self.request_search)
        self.server.currentIndexChanged.connect(self._on_server_changed)
        self.settings_button.clicked.connect(self.settings_requested)
        self.studies.itemSelectionChanged.connect(self._on_study_selected)
        self.series.itemSelectionChanged.connect(self._update_open_button)
        self.series.itemDoubleClicked.connect(self.request_open)
        self.open_button.clicked.connect(self.request_open)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.close_button.clicked.connect(self.reject)

    # ---- what the person asks for -------------------------------------------------------------------
    def server_name(self) -> str:
        """The server chosen ('' when none is configured)."""
        return str(self.server.currentData() or "")

    def search(self) -> StudySearch:
        """The search the fields describe."""
        days = self.dates.currentData()
        today = QDate.currentDate()
        start = today.addDays(-int(days)).toString("yyyyMMdd") if days is not None else ""
        end = today.toString("yyyyMMdd") if days is not None else ""
        return engine.StudySearch(self.patient.text().strip(), start, end, str(self.modality.currentData() or ""))

    def request_search(self) -> None:
        """Search the chosen server with the fields' search."""
        if not self.server_name():
            self.show_problem("Add a PACS server first (Servers…).")
            return
        self.show_busy("Searching…")
        self.search_requested.emit(self.server_name(), self.search())

    def chosen_series(self) -> SeriesInfo | None:
        """The series selected in the series list, or None."""
        rows = self.series.selectionModel().selectedRows()
        return self._series[rows[0].row()] if rows else None

    def request_open(self, *_: object) -> None:
        """Open the chosen series."""
        series = self.chosen_series()
        if series is not None and self.open_button.isEnabled():
            self.open_requested.emit(self.server_name(), series)

    # ---- what it is given ----------------------------------------------------------------------------
    def set_servers(self, names: list[str], current: str = "") -> None:
        """The configured servers' names; ``current`` chosen when it is one of them."""
        previous = current or self.server_name()
        self.server.blockSignals(True)
        self.server.clear()
        for name in names:
            self.server.addItem(name, name)
        if not names:
            self.server.addItem("No server yet: add one with Servers…", "")
        self.server.setCurrentIndex(max(self.server.findData(previous), 0))
        self.server.blockSignals(False)
        self.search_button.setEnabled(bool(names))

    def show_studies(self, studies: list[StudyInfo]) -> None:
        """List ``studies`` (the series list empties until one is chosen)."""
        self._studies = list(studies)
        self.studies.setRowCount(0)
        self.show_series([])
        for row, study in enumerate(self._studies):
            self.studies.insertRow(row)
            values = (study.patient_name, study.patient_id, shown_date(study.date),
                      study.modalities.replace("\\", ", "), study.description)
            for column, text in enumerate(values):
                self.studies.setItem(row, column, _item(text))
            self.studies.setItem(row, 5, _item(str(study.series) if study.series else "", number=True))
            self.studies.setItem(row, 6, _item(str(study.instances) if study.instances else "", number=True))
        count = len(self._studies)
        self.show_status("No study matches the search." if not count else
                         f"{count} {'study' if count == 1 else 'studies'} found. Choose one to see its series.")

    def show_series(self, series: list[SeriesInfo]) -> None:
        """List the chosen study's ``series``."""
        self._series = list(series)
        self.series.setRowCount(0)
        for row, item in enumerate(self._series):
            self.series.insertRow(row)
            self.series.setItem(row, 0, _item(str(item.number) if item.number is not None else "", number=True))
            self.series.setItem(row, 1, _item(item.modality))
            self.series.setItem(row, 2, _item(item.description))
            self.series.setItem(row, 3, _item(str(item.instances) if item.instances else "", number=True))
        if self._series:
            self.show_status("Choose a series and click Open.")
        self._update_open_button()

    def show_busy(self, text: str) -> None:
        """Say what is being asked (the lists stay usable)."""
        self.show_status(text)

    def show_status(self, text: str) -> None:
        """A plain line under the lists."""
        self.status.setStyleSheet("")
        self.status.setText(text)

    def show_problem(self, text: str) -> None:
        """A problem, in one plain sentence under the lists."""
        self.status.setStyleSheet("color: #d9534f; font-weight: bold;")
        self.status.setText(text)

    def show_pulling(self, pulling: bool) -> None:
        """While a series is copied: the progress bar and Cancel; Open and the lists wait."""
        self.progress.setVisible(pulling)
        self.cancel_button.setVisible(pulling)
        for widget in (self.server, self.settings_button, self.patient, self.dates, self.modality,
                       self.search_button, self.studies, self.series):
            widget.setEnabled(not pulling)
        self._pulling = pulling
        self._update_open_button()

    def show_progress(self, received: int, total: int) -> None:
        """``received`` images of ``total`` (0: not known)."""
        self.progress.setRange(0, max(total, received, 1) if total else 0)
        self.progress.setValue(received)
        self.show_status(f"Copying the series from the PACS: {received} of {total} images…" if total else
                         f"Copying the series from the PACS: {received} images…")

    # ---- reactions -----------------------------------------------------------------------------------
    def _on_server_changed(self, *_: object) -> None:
        self._studies, self._series = [], []
        self.studies.setRowCount(0)
        self.series.setRowCount(0)
        self.show_status("")
        self._update_open_button()

    def _on_study_selected(self) -> None:
        rows = self.studies.selectionModel().selectedRows()
        self.show_series([])
        if rows:
            self.show_busy("Listing the study's series…")
            self.study_chosen.emit(self.server_name(), self._studies[rows[0].row()].study_uid)

    def _update_open_button(self) -> None:
        self.open_button.setEnabled(self.chosen_series() is not None and not self._pulling)

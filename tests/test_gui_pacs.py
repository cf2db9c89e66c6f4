"""Open from PACS… on a real Orthanc (:mod:`gui_pacs_fixtures`): the browser lists the studies (patient, ID, date,
modality, description, series, images) with a working search, a study's series, and Open pulls the series with a
progress bar and opens it exactly as the same series opens from disk; Cancel mid-pull opens nothing and leaves no
files; a wrong password or a server that is down is one plain line in the browser."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from gui_fixtures import open_image
from gui_pacs_fixtures import PULL_TIMEOUT_MS, configure, dicomweb_server, dimse_server, orthanc  # noqa: F401
from orthanc_fixture import free_port
from tilewise import engine
from tilewise.gui.controllers.files import SETTINGS_OPEN_FOLDER
from tilewise.gui.controllers.pacs_servers import ServerSettings
from tilewise.gui.panels.pacs_browser import PacsBrowser

LIST_TIMEOUT_MS = 30_000


def _cells(table, row: int) -> list[str]:
    return [table.item(row, column).text() for column in range(table.columnCount())]


def _searched(qtbot, browser: PacsBrowser, rows: int) -> None:
    qtbot.waitUntil(lambda: browser.studies.rowCount() == rows and "found" in browser.status.text()
                    or (rows == 0 and "No study" in browser.status.text()), timeout=LIST_TIMEOUT_MS)


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_the_browser_lists_studies_and_series_and_opens_a_series_as_from_disk(gui, qtbot, orthanc, protocol: str,
                                                                              dialogs) -> None:
    viewer, widget = gui
    server, folder = orthanc
    configure(widget, dicomweb_server(server) if protocol == "dicomweb" else dimse_server(server))
    browser = widget.open_from_pacs()  # searches the chosen server at once
    _searched(qtbot, browser, 2)
    assert [browser.studies.horizontalHeaderItem(c).text() for c in range(7)] == \
        ["Patient", "Patient ID", "Date", "Modality", "Description", "Series", "Images"]
    assert _cells(browser.studies, 0) == ["Test Phantom", "TW001", "2026-12-01", "CT", "MRI head", "1", "16"]
    assert _cells(browser.studies, 1)[:5] == ["Other Person", "XY999", "2025-03-01", "CT", "CT chest"]

    browser.patient.setText("phantom")  # a name, any case, from its start
    browser.search_button.click()
    _searched(qtbot, browser, 1)
    browser.patient.setText("Y99")  # part of an ID
    browser.search_button.click()
    _searched(qtbot, browser, 1)
    assert _cells(browser.studies, 0)[1] == "XY999"
    browser.patient.setText("")
    browser.modality.setCurrentIndex(browser.modality.findData("MR"))
    browser.search_button.click()
    _searched(qtbot, browser, 0)
    browser.modality.setCurrentIndex(0)
    browser.search_button.click()
    _searched(qtbot, browser, 2)

    browser.studies.selectRow(0)
    qtbot.waitUntil(lambda: browser.series.rowCount() == 1, timeout=LIST_TIMEOUT_MS)
    assert _cells(browser.series, 0) == ["1", "CT", "T1 axial 5mm", "16"]
    assert not browser.open_button.isEnabled()
    browser.series.selectRow(0)
    assert browser.open_button.isEnabled()
    seen = []
    widget.pacs.pull_progress.connect(lambda received, total: seen.append((received, total)))
    with qtbot.waitSignal(widget.image_opened, timeout=PULL_TIMEOUT_MS) as opened:
        browser.open_button.click()
    pulled = opened.args[0]
    assert [layer.name for layer in pulled] == ["CT 1 T1 axial 5mm"]
    assert seen[0] == (0, 16) and seen[-1] == (16, 16)
    assert not browser.isVisible()  # the browser closes once the series is open
    assert not dialogs["critical"]
    assert widget.image_panel.chosen() == pulled  # chosen for the model, as any opened image
    assert widget.qsettings.value(SETTINGS_OPEN_FOLDER, "") in ("", None)  # the private copy is no folder to offer

    local = open_image(qtbot, widget, folder)  # the same series from disk, through the same open flow
    np.testing.assert_array_equal(np.asarray(pulled[0].data), np.asarray(local[0].data))
    assert pulled[0].metadata["tilewise_geometry"] == local[0].metadata["tilewise_geometry"]
    np.testing.assert_allclose(pulled[0].affine.affine_matrix, local[0].affine.affine_matrix)
    assert widget.suggested_save_path(pulled[0]).parent != Path(pulled[0].metadata["tilewise_source"]).parent

    copies = widget.pacs.folder()
    widget.shutdown()
    assert not copies.exists()  # the pulled series go when the viewer closes


def test_cancel_mid_pull_opens_nothing_and_leaves_no_files(gui, qtbot, orthanc, monkeypatch) -> None:
    viewer, widget = gui
    server, _ = orthanc
    configure(widget, dicomweb_server(server))
    fetch = engine.fetch_series
    asked: list[int] = []

    def paused_at_the_third_image(connection, study, series, folder, progress, cancel):
        def heard(received: int) -> None:
            progress(received)
            if received == 3:  # the client waits for the click, so the cancel lands mid-pull for certain
                asked.append(received)
                for _ in range(300):
                    if cancel.cancelled:
                        break
                    threading.Event().wait(0.1)
        return fetch(connection, study, series, folder, heard, cancel)

    monkeypatch.setattr(engine, "fetch_series", paused_at_the_third_image)
    browser = widget.open_from_pacs()
    _searched(qtbot, browser, 2)
    browser.studies.selectRow(0)
    qtbot.waitUntil(lambda: browser.series.rowCount() == 1, timeout=LIST_TIMEOUT_MS)
    browser.series.selectRow(0)
    opened = []
    widget.image_opened.connect(opened.append)
    browser.open_button.click()
    qtbot.waitUntil(lambda: browser.progress.value() == 3, timeout=PULL_TIMEOUT_MS)
    assert browser.progress.isVisible() and browser.cancel_button.isVisible()
    assert not browser.open_button.isEnabled() and not browser.studies.isEnabled()
    assert "3 of 16 images" in browser.status.text()
    with qtbot.waitSignal(widget.pacs.pull_ended, timeout=PULL_TIMEOUT_MS) as ended:
        browser.cancel_button.click()
    assert ended.args == ["cancelled"] and asked == [3]
    assert "nothing was opened" in browser.status.text()
    assert browser.isVisible() and browser.open_button.isEnabled() and not browser.progress.isVisible()
    qtbot.wait(200)
    assert opened == [] and len(viewer.layers) == 0
    assert [p for p in widget.pacs.folder().rglob("*") if p.is_file()] == []  # no half-pulled series anywhere


def test_a_wrong_password_or_a_server_that_is_down_is_one_plain_line(gui, qtbot, orthanc, dialogs) -> None:
    viewer, widget = gui
    server, _ = orthanc
    configure(widget, dicomweb_server(server), password="not-the-password")
    browser = widget.open_from_pacs()
    qtbot.waitUntil(lambda: "refused" in browser.status.text(), timeout=LIST_TIMEOUT_MS)
    line = browser.status.text()
    assert "check the user name and password in the PACS server settings" in line
    assert "\n" not in line and "Traceback" not in line and "not-the-password" not in line
    assert widget.last_error == line and not dialogs["critical"]

    down = ServerSettings("Down", f"http://127.0.0.1:{free_port()}/dicom-web")
    widget.pacs_servers.set_servers([down])
    browser.search_button.click()
    qtbot.waitUntil(lambda: "cannot connect" in browser.status.text(), timeout=LIST_TIMEOUT_MS)
    assert "is the server running and the address right?" in browser.status.text()
    assert browser.search_button.isEnabled() and browser.studies.rowCount() == 0

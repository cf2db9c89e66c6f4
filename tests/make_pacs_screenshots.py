"""Screenshots of Open from PACS… and PACS servers… for the README:
``xvfb-run -s "-screen 0 1920x1080x24" python tests/make_pacs_screenshots.py --size 1920x1080``.

Starts a real Orthanc (:mod:`orthanc_fixture`) holding five small studies of made-up patients, opens the viewer at
``--size`` with one server configured, searches, chooses a study (its series listed) and saves the screen with the
browser (``pacs_browser_<size>.png``), then with the server settings open (``pacs_settings_<size>.png``). Needs a
display (Xvfb) and Debian's orthanc and orthanc-dicomweb.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_API", "pyside6")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tilewise.gui._preload import preload_native_libraries  # noqa: E402

preload_native_libraries()

import napari  # noqa: E402
from gui_pacs_fixtures import _series  # noqa: E402
from orthanc_fixture import PASSWORD, USER, orthanc_server  # noqa: E402
from qtpy.QtCore import QSettings  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402
from tilewise.gui.app import TITLE  # noqa: E402
from tilewise.gui.controllers.pacs_servers import ServerSettings  # noqa: E402
from tilewise.gui.widget import TilewiseWidget  # noqa: E402

STUDIES = (("Doe^Jane", "H1003452", "20261204", "CT chest with contrast", "Chest 1.25mm", "CT"),
           ("Smith^John", "H0998121", "20261203", "MRI brain", "T1 MPRAGE sagittal", "MR"),
           ("Garcia^Luis", "H1010777", "20261130", "CT abdomen pelvis", "Abdomen portal venous 3mm", "CT"),
           ("Nguyen^Thi Mai", "H0870034", "20261115", "MRI knee left", "PD fat sat coronal", "MR"),
           ("Okafor^Chidi", "H1100213", "20260902", "CT head without contrast", "Head 5mm", "CT"))


def _wait(app: QApplication, done, seconds: float = 30.0) -> None:
    import time

    end = time.monotonic() + seconds
    while not done() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "resources" / "screenshots")
    parser.add_argument("--size", default="1366x768", help="screen size, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    root = Path(tempfile.mkdtemp(prefix="tilewise-pacs-shots-"))
    for index, (name, patient_id, date, study, series, modality) in enumerate(STUDIES):
        _series(root / str(index), (32, 32, 8 + 4 * index), (6.0, 6.0, 5.0), PatientName=name, PatientID=patient_id,
                StudyDate=date, StudyDescription=study, SeriesDescription=series, Modality=modality)
    with orthanc_server(root / "orthanc", dicom=True) as server:
        server.upload(sorted(p for p in root.glob("[0-9]/*")))
        viewer = napari.Viewer(title=TITLE, show=False)
        settings = QSettings(str(root / "settings.ini"), QSettings.IniFormat)
        widget = TilewiseWidget(viewer, settings=settings)
        viewer.window.add_dock_widget(widget, name="Tilewise", area="right")
        window = viewer.window._qt_window
        window.resize(width, height)
        window.move(0, 0)
        window.show()
        app = QApplication.instance()
        widget.pacs_servers.passwords.remember("Hospital PACS", PASSWORD)
        widget.pacs_servers.set_servers([
            ServerSettings("Hospital PACS", f"{server.http_url}/dicom-web", user=USER),
            ServerSettings("Modality gateway", f"ORTHANC@127.0.0.1:{server.dicom_port}")])
        browser = widget.open_from_pacs()
        browser.resize(min(1100, width - 80), min(680, height - 80))
        browser.move((width - browser.width()) // 2, (height - browser.height()) // 2)
        _wait(app, lambda: browser.studies.rowCount() == len(STUDIES))
        browser.studies.selectRow(1)
        _wait(app, lambda: browser.series.rowCount() == 1)
        browser.series.selectRow(0)
        _wait(app, lambda: False, 1.0)
        args.out.mkdir(parents=True, exist_ok=True)
        app.primaryScreen().grabWindow(0).save(str(args.out / f"pacs_browser_{width}x{height}.png"))
        dialog = widget.pacs_flow.edit_servers()
        dialog.resize(760, 460)
        dialog.move((width - dialog.width()) // 2, (height - dialog.height()) // 2)
        dialog.list.setCurrentRow(0)
        _wait(app, lambda: False, 1.0)
        app.primaryScreen().grabWindow(0).save(str(args.out / f"pacs_settings_{width}x{height}.png"))
        dialog.reject()
        browser.reject()
        widget.shutdown()
        viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

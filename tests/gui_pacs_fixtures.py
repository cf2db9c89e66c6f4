"""The real Orthanc the viewer's PACS tests share (:mod:`orthanc_fixture`), holding two CT studies, and a server of
the viewer's settings pointing at it. Not a test module: ``test_gui_pacs*.py`` import the fixture from here."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_factory import resampled_sample, write_ct_series
from orthanc_fixture import PASSWORD, USER, Orthanc, missing_orthanc, orthanc_server
from tilewise.gui.controllers.pacs_servers import ServerSettings
from tilewise.gui.widget import TilewiseWidget

SERVER = "Orthanc test"
PULL_TIMEOUT_MS = 60_000


def _series(folder: Path, size: tuple[int, int, int], spacing: tuple[float, float, float], **tags: str) -> None:
    """A CT series of the demo sample in ``folder``, with ``tags`` (DICOM keywords) set on every file."""
    write_ct_series(resampled_sample(size, spacing), folder)
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, Path]]:
    """One Orthanc (DICOMweb and DICOM ports) holding a 16-image brain series described 'T1 axial 5mm' (study of
    2026-12-01, 'MRI head') and an older study of another patient; yields it and the brain series' folder."""
    reason = missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("dicomweb_client", reason="the pacs extra is not installed: pip install 'tilewise[pacs]'")
    root = tmp_path_factory.mktemp("gui_pacs")
    _series(root / "brain", (48, 48, 16), (4.5, 4.5, 5.5), SeriesDescription="T1 axial 5mm",
            StudyDescription="MRI head")
    _series(root / "other", (32, 32, 8), (6.0, 6.0, 8.0), PatientName="Other^Person", PatientID="XY999",
            StudyDate="20250301", StudyDescription="CT chest")
    with orthanc_server(root / "orthanc", dicom=True) as server:
        server.upload(sorted((root / "brain").iterdir()) + sorted((root / "other").iterdir()))
        yield server, root / "brain"


def dicomweb_server(orthanc: Orthanc, name: str = SERVER) -> ServerSettings:
    """The viewer's settings for Orthanc's DICOMweb root, with the test user."""
    return ServerSettings(name, f"{orthanc.http_url}/dicom-web", user=USER)


def dimse_server(orthanc: Orthanc, name: str = SERVER) -> ServerSettings:
    """The viewer's settings for Orthanc's DICOM service (C-FIND, C-GET, C-STORE)."""
    return ServerSettings(name, f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", ae_title="TILEWISE")


def configure(widget: TilewiseWidget, server: ServerSettings, password: str = PASSWORD) -> None:
    """``server`` as the only configured server, its password known for this session."""
    widget.pacs_servers.passwords.remember(server.name, password)
    widget.pacs_servers.set_servers([server])

"""A real Orthanc PACS for the tests: Debian's ``Orthanc`` binary with its DICOMweb plugin, started on a free
loopback port with its own temporary storage and configuration (HTTP basic authentication on, no HTTP access from
other computers; the DICOM port on request, knowing Tilewise's AE title at a loopback port for C-MOVE), stopped (and
its storage removed with the test's folder) afterwards.

Not a test module: test modules use :func:`orthanc_server` as a context manager. Tests that need it are skipped, with
the reason, only when the Orthanc binary or its DICOMweb plugin is not installed (Debian: ``apt-get install orthanc
orthanc-dicomweb``).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

PLUGIN_PLACES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
USER, PASSWORD = "tilewise", "pacs-Secret-29"
PACS_AET, TILEWISE_AET = "ORTHANC", "TILEWISE"
START_TIMEOUT_S = 30.0


def orthanc_binary() -> str | None:
    """The Orthanc executable (Debian installs it in /usr/sbin, which a user's PATH may lack), or None."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library, or None."""
    found = [path for path in PLUGIN_PLACES if Path(path).is_file()]
    found += sorted(str(p) for p in Path("/usr/lib").glob("**/libOrthancDicomWeb.so*"))[:1]
    return found[0] if found else None


def missing_orthanc() -> str | None:
    """Why Orthanc cannot be started here (for a skip reason), or None when it can."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its addresses, credentials and log file."""

    http_url: str
    """E.g. 'http://127.0.0.1:41234'."""
    folder: Path
    dicom_port: int | None = None
    """Orthanc's DICOM port (None when its DICOM service is off)."""
    move_port: int | None = None
    """The port Orthanc sends C-MOVEs for AE title TILEWISE to (on 127.0.0.1)."""

    @property
    def dicom(self) -> str:
        """Its DICOM service as Tilewise's command line takes it: 'dicom://ORTHANC@127.0.0.1:PORT'."""
        assert self.dicom_port is not None, "started without its DICOM service"
        return f"dicom://{PACS_AET}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root as Tilewise's command line takes it: 'dicomweb+http://127.0.0.1:PORT/dicom-web'."""
        return f"dicomweb+{self.http_url}/dicom-web"

    @property
    def port(self) -> int:
        return int(self.http_url.rsplit(":", 1)[1])

    def session(self) -> requests.Session:
        """A requests session with the credentials, for the test's own calls."""
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return session

    def upload(self, files: list[Path]) -> None:
        """Store DICOM files through Orthanc's REST API (``POST /instances``), as a modality would send them."""
        with self.session() as session:
            for path in files:
                answer = session.post(f"{self.http_url}/instances", data=path.read_bytes(), timeout=30)
                answer.raise_for_status()

    def log(self) -> str:
        """The end of Orthanc's log (for a failure's message)."""
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextmanager
def orthanc_server(folder: Path, dicom: bool = False) -> Iterator[Orthanc]:
    """Start Orthanc with its storage and configuration in ``folder`` (``dicom``: its DICOM service too, AE title
    ORTHANC, knowing TILEWISE at 127.0.0.1 and a free port); stop it afterwards. Raises RuntimeError (with the log)
    when it does not answer within 30 s.

    Plain http on loopback: Debian's Orthanc 1.10.1 crashes (segmentation fault) on its first HTTPS request with
    ``SslEnabled`` on this system's OpenSSL 3, so TLS is tested against a TLS endpoint of the test's own."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    assert binary is not None and plugin is not None, missing_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    port, dicom_port, move_port = free_port(), free_port(), free_port()
    configuration = {
        "Name": "TilewiseTest", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "HttpPort": port, "DicomServerEnabled": dicom, "DicomPort": dicom_port, "DicomAet": PACS_AET,
        "DicomModalities": {"tilewise": [TILEWISE_AET, "127.0.0.1", move_port]}, "DicomAssociationCloseDelay": 0,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "HttpTimeout": 60,
        "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{port}"},
        "SaveJobs": False, "StableAge": 1, "ConcurrentJobs": 1,
    }
    config = folder / "orthanc.json"
    config.write_text(json.dumps(configuration, indent=1))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                               env={**os.environ, "LANG": "C"})
    server = Orthanc(f"http://127.0.0.1:{port}", folder, dicom_port if dicom else None,
                     move_port if dicom else None)
    try:
        _wait_until_up(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def _wait_until_up(server: Orthanc, process: subprocess.Popen) -> None:
    """Return once ``GET /system`` answers with the credentials; raise RuntimeError with the log otherwise."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with server.session() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with status {process.returncode}:\n{server.log()}")
            try:
                if session.get(f"{server.http_url}/system", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S:.0f} s:\n{server.log()}")

"""From the PACS and back, on a real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``, started by
:mod:`orthanc_fixture` on a loopback port with basic authentication): a CT series uploaded to Orthanc, pulled by
DICOMweb, segmented, its SEG stored back with STOW-RS; Orthanc then holds the SEG in the same study, referencing the
source series, and its voxels equal the NIfTI output's. Batch from a QIDO-RS search and a study list, credentials
from a netrc file and never on the command line or in the output, TLS verified, one line for every failure.
"""
from __future__ import annotations

import http.server
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import resampled_sample, write_ct_series
from orthanc_fixture import PASSWORD, USER, Orthanc, missing_orthanc, orthanc_server
from tilewise.engine.errors import InputError
from tilewise.engine.pacs import credentials_for, parse_dicomweb_url

FAST = ("-m", "demo", "--preset", "preview", "-device", "cpu", "--backend", "torch")  # no OpenVINO conversion
PATIENT = "Test^Phantom"  # write_ct_series' patient name: it must never appear in what Tilewise prints


def _series(folder: Path, size: tuple[int, int, int], spacing: tuple[float, float, float],
            study_date: str | None = None, description: str | None = None) -> tuple[str, str]:
    """A CT series of the sample in ``folder`` (its study dated ``study_date``, the series described as
    ``description``, when given); its (study, series) UIDs."""
    write_ct_series(resampled_sample(size, spacing), folder)
    for path in folder.iterdir():
        if study_date is not None or description is not None:
            dataset = pydicom.dcmread(path)
            dataset.StudyDate = study_date or dataset.StudyDate
            dataset.SeriesDescription = description or ""
            dataset.save_as(path)
    first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One Orthanc for the module, holding two CT series in two studies (2026-12-01, and 2026-06-15 described as
    'CT chest 5mm'); credentials
    in a netrc file that ``TILEWISE_NETRC`` names; temporary folders under a folder of the module's own."""
    reason = missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("dicomweb_client", reason="the pacs extra is not installed: pip install 'tilewise[pacs]'")
    root = tmp_path_factory.mktemp("pacs")
    first = _series(root / "brain", (64, 64, 24), (3.5, 3.5, 4.0))
    second = _series(root / "older", (48, 48, 16), (4.5, 4.5, 5.5), study_date="20260615", description="CT chest 5mm")
    netrc = root / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    with pytest.MonkeyPatch.context() as patch, orthanc_server(root / "orthanc", dicom=True) as orthanc:
        patch.setenv("TILEWISE_NETRC", str(netrc))
        for name in ("TILEWISE_PACS_USER", "TILEWISE_PACS_PASSWORD", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                     "TILEWISE_AE_TITLE", "TILEWISE_AE_PORT"):
            patch.delenv(name, raising=False)
        (root / "tmp").mkdir()
        patch.setattr(tempfile, "tempdir", str(root / "tmp"))  # where pulled series go: checked empty afterwards
        orthanc.upload(sorted((root / "brain").iterdir()) + sorted((root / "older").iterdir()))
        yield {"orthanc": orthanc, "root": root, "first": first, "second": second, "tmp": root / "tmp"}


def _client(orthanc: Orthanc):  # the test's own DICOMweb client, to look at what Orthanc holds
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(f"{orthanc.http_url}/dicom-web", session=orthanc.session())


def _stored(orthanc: Orthanc, written: Path, study: str) -> pydicom.Dataset:
    """The object Tilewise wrote at ``written``, as Orthanc holds it in ``study`` (WADO-RS by its UIDs)."""
    local = pydicom.dcmread(written, stop_before_pixels=True)
    assert local.StudyInstanceUID == study
    return _client(orthanc).retrieve_instance(study, local.SeriesInstanceUID, local.SOPInstanceUID)


def test_round_trip_pull_segment_send(pacs: dict, tmp_path: Path, run_cli) -> None:
    """The target: pulled by DICOMweb, segmented, the SEG stored back in the same study; Orthanc's SEG references
    the source series and holds the NIfTI output's voxels exactly. Nothing names the patient; nothing stays in the
    temporary folder."""
    orthanc, (study, series) = pacs["orthanc"], pacs["first"]
    started = time.perf_counter()
    code, _, err = run_cli(["predict", "-i", f"{orthanc.dicomweb}/studies/{study}/series/{series}", "-o",
                            tmp_path / "out", *FAST, "--send", orthanc.dicomweb])
    seconds = time.perf_counter() - started
    assert code == 0, err
    assert (tmp_path / "out" / f"{series}_seg.dcm").is_file()
    assert f"pulled series {series} (24 files" in err and "stored " in err
    assert PATIENT not in err and "Phantom" not in err and PASSWORD not in err
    assert list(pacs["tmp"].iterdir()) == []
    code, _, err = run_cli(["predict", "-i", pacs["root"] / "brain", "-o", tmp_path / "nifti", *FAST, "-q"])
    assert code == 0, err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti" / "brain.nii.gz")))
    assert set(np.unique(labels)) == {0, 1, 2, 3}

    seg = hd.seg.Segmentation.from_dataset(_stored(orthanc, tmp_path / "out" / f"{series}_seg.dcm", study))
    assert seg.StudyInstanceUID == study and seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    sources = sorted(pacs["root"].joinpath("brain").iterdir(),
                     key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    nifti = sitk.ReadImage(str(tmp_path / "nifti" / "brain.nii.gz"))
    if nifti.TransformIndexToPhysicalPoint((0, 0, 0))[2] > nifti.TransformIndexToPhysicalPoint((0, 0, 1))[2]:
        sources.reverse()  # the NIfTI's slice order along z
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sources]
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(uids, combine_segments=True), labels)
    print(f"\nround trip (pull, segment with the demo model's preview preset, send): {seconds:.1f}s")


def test_batch_from_a_qido_search_and_a_study_list(pacs: dict, tmp_path: Path, run_cli) -> None:
    """A QIDO-RS search by modality and date range finds the older study's series only; a study list names the
    first study, whose RTSTRUCT goes back to Orthanc too. Outputs are named by UID."""
    orthanc = pacs["orthanc"]
    (_, first_series), (older_study, older_series) = pacs["first"], pacs["second"]
    search = f"{orthanc.dicomweb}/series?Modality=CT&StudyDate=20260101-20260630"
    code, _, err = run_cli(["batch", "-i", search, "-o", tmp_path / "q", *FAST, "--send", orthanc.dicomweb])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "q").glob("*.dcm")) == [f"{older_series}_seg.dcm"]
    stored = _stored(orthanc, tmp_path / "q" / f"{older_series}_seg.dcm", older_study)
    assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == older_series

    study = pacs["first"][0]
    listing = tmp_path / "studies.txt"
    listing.write_text(f"# the first study\n{orthanc.dicomweb}/studies/{study}\n")
    code, _, err = run_cli(["batch", "-i", listing, "-o", tmp_path / "l", *FAST, "--output-type", "dicom-rtstruct",
                            "--send", orthanc.dicomweb, "-q"])
    assert code == 0, err
    assert (tmp_path / "l" / f"{study}_rtstruct.dcm").is_file()
    structure = _stored(orthanc, tmp_path / "l" / f"{study}_rtstruct.dcm", study)
    referenced = structure.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID == first_series
    assert PATIENT not in err and list(pacs["tmp"].iterdir()) == []


def test_failures_are_one_line_and_keep_credentials_secret(pacs: dict, tmp_path: Path, run_cli,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong password: exit 3; an unknown series, an unreachable server, credentials in the address or a search
    that matches nothing: exit 2. One line each, no traceback, no password, nothing written or left behind."""
    orthanc, (study, _) = pacs["orthanc"], pacs["first"]
    address = f"{orthanc.dicomweb}/studies/{study}/series/1.2.3.4"
    code, _, err = run_cli(["predict", "-i", address, "-o", tmp_path / "o", *FAST])
    assert code == 2 and "retrieving series 1.2.3.4: not found on the server (HTTP 404)" in err
    closed = f"dicomweb+http://127.0.0.1:{orthanc.port + 1 if orthanc.port < 65535 else 1}/dicom-web/studies/1/series/2"
    code, _, err = run_cli(["predict", "-i", closed, "-o", tmp_path / "o", *FAST])
    assert code == 2 and "cannot connect" in err
    code, _, err = run_cli(["batch", "-i", f"{orthanc.dicomweb}/series?Modality=MR", "-o", tmp_path / "o", *FAST])
    assert code == 2 and "no image series matches" in err
    secret = "Pass-In-Url-77"
    code, _, err = run_cli(["predict", "-i", address.replace("://", f"://{USER}:{secret}@"), "-o", tmp_path / "o",
                            *FAST])
    assert code == 2 and "credentials do not belong in the address" in err and secret not in err
    monkeypatch.setenv("TILEWISE_PACS_USER", USER)
    monkeypatch.setenv("TILEWISE_PACS_PASSWORD", "wrong-Password-1")
    code, _, err = run_cli(["predict", "-i", address, "-o", tmp_path / "o", *FAST])
    assert code == 3 and "refused the credentials from TILEWISE_PACS_USER/TILEWISE_PACS_PASSWORD (HTTP 401)" in err
    assert "wrong-Password-1" not in err
    for text in (err,):
        assert len([line for line in text.splitlines() if line.startswith("tilewise: error")]) == 1
    assert "Traceback" not in err and not (tmp_path / "o").exists() and list(pacs["tmp"].iterdir()) == []


def test_send_needs_a_dicom_output_type(pacs: dict, tmp_path: Path, run_cli) -> None:
    code, _, err = run_cli(["predict", "-i", pacs["root"] / "brain", "-o", tmp_path / "o", *FAST, "--output-type",
                            "nifti", "--send", pacs["orthanc"].dicomweb])
    assert code == 2 and "--send stores DICOM objects; --output-type nifti writes none" in err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def tls_endpoint(tmp_path: Path) -> Iterator[dict]:
    """An https endpoint on loopback with a self-signed certificate (made with openssl) that answers every request
    with 404 and records the paths asked for: enough to see whether a client trusts a certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pytest.importorskip("dicomweb_client", reason="the pacs extra is not installed: pip install 'tilewise[pacs]'")
    key, certificate = tmp_path / "key.pem", tmp_path / "certificate.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True, timeout=60)
    asked: list[str] = []

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"dicomweb+https://127.0.0.1:{server.server_address[1]}/dicom-web", "asked": asked,
               "certificate": certificate}
    finally:
        server.shutdown()
        server.server_close()


def test_tls_certificates_are_verified(tls_endpoint: dict, tmp_path: Path, run_cli,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown certificate stops the request before anything is sent (one line, exit 2); the certificate named
    in REQUESTS_CA_BUNDLE is trusted."""
    monkeypatch.setenv("TILEWISE_PACS_USER", USER)
    monkeypatch.setenv("TILEWISE_PACS_PASSWORD", PASSWORD)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    address = f"{tls_endpoint['url']}/studies/1.2/series/3.4"
    code, _, err = run_cli(["predict", "-i", address, "-o", tmp_path / "o", *FAST])
    assert code == 2 and "the TLS certificate could not be verified" in err and "REQUESTS_CA_BUNDLE" in err
    assert tls_endpoint["asked"] == []
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_endpoint["certificate"]))
    code, _, err = run_cli(["predict", "-i", address, "-o", tmp_path / "o", *FAST])
    assert code == 2 and "not found on the server (HTTP 404)" in err
    assert tls_endpoint["asked"] and tls_endpoint["asked"][0].startswith("/dicom-web/studies/1.2/series/3.4")


def test_dicomweb_addresses() -> None:
    location = parse_dicomweb_url("dicomweb+https://pacs.example:8443/orthanc/dicom-web/studies/1.2/series/3.4")
    assert (location.root, location.study_uid, location.series_uid) == \
        ("https://pacs.example:8443/orthanc/dicom-web", "1.2", "3.4")
    search = parse_dicomweb_url("dicomweb+http://h/dicom-web/series?Modality=CT&StudyDate=20260101-20261231")
    assert search.search == "series" and search.filters == {"Modality": "CT", "StudyDate": "20260101-20261231"}
    assert parse_dicomweb_url("dicomweb+http://h:80/dicom-web").search is None
    for bad, words in (("http://h/dicom-web", "not a DICOMweb address"),
                       ("dicomweb+http://u:p@h/dicom-web", "credentials do not belong"),
                       ("dicomweb+http://h/dicom-web/studies/1/instances/2", "expected"),
                       ("dicomweb+http://h/dicom-web?Modality=CT", "needs a search")):
        with pytest.raises(InputError, match=words) as raised:
            parse_dicomweb_url(bad)
        assert ":p@" not in str(raised.value)


def test_credentials_from_the_environment_or_a_netrc_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pacs login a password pa\nmachine pacs:8443 login b password pb\n"
                     "default login c password pc\n")
    netrc.chmod(0o600)
    for name in ("TILEWISE_PACS_USER", "TILEWISE_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TILEWISE_NETRC", str(netrc))
    assert credentials_for("pacs", 8443).user == "b" and credentials_for("pacs", 80).user == "a"
    assert credentials_for("other").user == "c" and "pc" not in repr(credentials_for("other"))
    monkeypatch.setenv("TILEWISE_PACS_USER", "env")
    with pytest.raises(InputError, match="set both"):
        credentials_for("pacs")
    monkeypatch.setenv("TILEWISE_PACS_PASSWORD", "pe")
    assert credentials_for("pacs").user == "env"
    monkeypatch.delenv("TILEWISE_PACS_USER")
    monkeypatch.delenv("TILEWISE_PACS_PASSWORD")
    netrc.write_text("pacs-server login a password pa\n")
    with pytest.raises(InputError, match="cannot be read as a netrc file") as raised:
        credentials_for("pacs")
    assert "pa" not in str(raised.value).replace(str(netrc), "").replace("parse", "")
    monkeypatch.setenv("TILEWISE_NETRC", str(tmp_path / "none"))
    with pytest.raises(InputError, match="no such file"):
        credentials_for("pacs")
    assert os.environ["TILEWISE_NETRC"].endswith("none")


def test_readme_commands_run_as_written(pacs: dict, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's 'From the PACS' commands, on this Orthanc and the demo model's preview preset."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### From the PACS\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    [block] = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    orthanc, (study, series), (_, older_series) = pacs["orthanc"], pacs["first"], pacs["second"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies.txt").write_text(f"{orthanc.dicomweb}/studies/{study}\n")
    commands = [line.strip() for line in block.replace("\\\n", " ").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 4
    for command in commands:
        filled = (command.replace("PACS:8042", f"127.0.0.1:{orthanc.port}")
                  .replace("PACS:4242", f"127.0.0.1:{orthanc.dicom_port}").replace("STUDY_UID", study)
                  .replace("SERIES_UID", series).replace("MODEL_DIR", " ".join(FAST[1:])))
        words = shlex.split(filled)
        assert words[0] == "tilewise" and "PACS" not in filled and "_UID" not in filled, filled
        code, _, err = run_cli(words[1:])
        assert code == 0, f"{filled}\n{err}"
    assert (tmp_path / "out" / f"{series}_seg.dcm").is_file()
    assert (tmp_path / "out" / f"{older_series}_rtstruct.dcm").is_file()
    assert (tmp_path / "out" / f"{study}.nii.gz").is_file()

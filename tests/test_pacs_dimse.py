"""From the PACS and back by DIMSE, on a real Orthanc with its DICOM service on (:mod:`orthanc_fixture`): a series
retrieved by C-GET, segmented and its SEG stored back by C-STORE, then read from Orthanc and compared with the NIfTI
output voxel for voxel; a C-FIND search retrieved by C-MOVE; every failure one line.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import resampled_sample, write_ct_series
from orthanc_fixture import PACS_AET, TILEWISE_AET, missing_orthanc, orthanc_server

FAST = ("-m", "demo", "--preset", "preview", "-device", "cpu", "--backend", "torch")  # no OpenVINO conversion


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Orthanc with its DICOM service, holding one CT series (study 2026-06-15, 'CT chest 5mm')."""
    reason = missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("pynetdicom", reason="the pacs extra is not installed: pip install 'tilewise[pacs]'")
    root = tmp_path_factory.mktemp("dimse")
    write_ct_series(resampled_sample((48, 48, 16), (4.5, 4.5, 5.5)), root / "chest")
    for path in (root / "chest").iterdir():
        dataset = pydicom.dcmread(path)
        dataset.StudyDate, dataset.SeriesDescription = "20260615", "CT chest 5mm"
        dataset.save_as(path)
    first = pydicom.dcmread(next((root / "chest").iterdir()), stop_before_pixels=True)
    with pytest.MonkeyPatch.context() as patch, orthanc_server(root / "orthanc", dicom=True) as orthanc:
        for name in ("TILEWISE_AE_TITLE", "TILEWISE_AE_PORT"):
            patch.delenv(name, raising=False)
        (root / "tmp").mkdir()
        patch.setattr(tempfile, "tempdir", str(root / "tmp"))  # where pulled series go: checked empty afterwards
        orthanc.upload(sorted((root / "chest").iterdir()))
        yield {"orthanc": orthanc, "root": root, "study": str(first.StudyInstanceUID),
               "series": str(first.SeriesInstanceUID), "tmp": root / "tmp"}


def test_c_get_segment_c_store_round_trip(pacs: dict, tmp_path: Path, run_cli) -> None:
    orthanc, study, series = pacs["orthanc"], pacs["study"], pacs["series"]
    code, _, err = run_cli(["predict", "-i", f"{orthanc.dicom}/studies/{study}/series/{series}", "-o",
                            tmp_path / "out", *FAST, "--send", orthanc.dicom])
    assert code == 0, err
    assert f"pulled series {series} (16 files" in err and f"on {PACS_AET}@127.0.0.1:{orthanc.dicom_port}" in err
    assert "Phantom" not in err and list(pacs["tmp"].iterdir()) == []
    code, _, err = run_cli(["predict", "-i", pacs["root"] / "chest", "-o", tmp_path / "nifti", *FAST, "-q"])
    assert code == 0, err
    nifti = sitk.ReadImage(str(tmp_path / "nifti" / "chest.nii.gz"))
    labels = sitk.GetArrayFromImage(nifti)

    local = pydicom.dcmread(tmp_path / "out" / f"{series}_seg.dcm", stop_before_pixels=True)
    with orthanc.session() as session:  # what Orthanc holds now, by its REST API
        [found] = session.post(f"{orthanc.http_url}/tools/find", json={
            "Level": "Instance", "Query": {"SOPInstanceUID": local.SOPInstanceUID}}, timeout=30).json()
        stored = session.get(f"{orthanc.http_url}/instances/{found}/file", timeout=30).content
    (tmp_path / "stored.dcm").write_bytes(stored)
    seg = hd.seg.segread(tmp_path / "stored.dcm")
    assert seg.StudyInstanceUID == study and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    by_z = {}
    for path in (pacs["root"] / "chest").iterdir():
        header = pydicom.dcmread(path, stop_before_pixels=True)
        point = [float(v) for v in header.ImagePositionPatient]
        by_z[round(nifti.TransformPhysicalPointToContinuousIndex(point)[2])] = header.SOPInstanceUID
    uids = [by_z[k] for k in range(nifti.GetDepth())]
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(uids, combine_segments=True), labels)


def test_c_find_search_retrieved_by_c_move(pacs: dict, tmp_path: Path, run_cli,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    orthanc, series = pacs["orthanc"], pacs["series"]
    monkeypatch.setenv("TILEWISE_AE_PORT", str(orthanc.move_port))  # Orthanc knows TILEWISE at this port
    search = f"{orthanc.dicom}/series?Modality=CT&StudyDate=20260101-20260630&SeriesDescription=*chest*"
    code, _, err = run_cli(["batch", "-i", search, "-o", tmp_path / "out", *FAST, "--output-type", "dicom-seg"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.dcm")) == [f"{series}_seg.dcm"]
    code, _, err = run_cli(["batch", "-i", f"{orthanc.dicom}/series?Modality=MR", "-o", tmp_path / "none", *FAST])
    assert code == 2 and "no image series matches" in err
    assert list(pacs["tmp"].iterdir()) == []


def test_dimse_failures_are_one_line(pacs: dict, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    orthanc, study, series = pacs["orthanc"], pacs["study"], pacs["series"]
    cases = [
        (f"{orthanc.dicom}/studies/{study}/series/1.2.3.4", {}, "retrieving series 1.2.3.4: not found on the PACS"),
        (f"dicom://{PACS_AET}@127.0.0.1:{orthanc.move_port}/studies/{study}/series/{series}", {},
         "cannot connect (Connection refused)"),
        (f"{orthanc.dicom}/studies/{study}/series/{series}", {"TILEWISE_AE_TITLE": "STRANGER"},
         "the PACS sent no instance; does it let AE title STRANGER retrieve (C-GET)?"),
        (f"{orthanc.dicom}/series?NoSuchKey=1", {}, "'NoSuchKey' is not a DICOM attribute keyword"),
        (f"dicom://{'A' * 17}@127.0.0.1:{orthanc.dicom_port}/studies/1", {}, "AE title (before '@') must be 1 to 16"),
    ]
    for address, environment, words in cases:
        with monkeypatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            code, _, err = run_cli(["predict", "-i", address, "-o", tmp_path / "o", *FAST])
        assert code == 2 and words in err, (address, err)
        assert [line for line in err.splitlines() if line.startswith("tilewise: error")] == err.strip().splitlines()
    assert not (tmp_path / "o").exists() and list(pacs["tmp"].iterdir()) == []
    assert TILEWISE_AET == "TILEWISE"

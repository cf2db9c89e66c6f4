"""Inputs are sacred: no output path may be one of a case's input files, and killed runs leave nothing behind."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import model_factory
from tilewise.engine.errors import InputError
from tilewise.engine.data.safe_output import STALE_AFTER_S, atomic_output, clean_stale_staging, input_files, refuse_overwriting_inputs

SMALL = (24, 28, 32)
ERROR_PREFIX = "tilewise: error: "


def fingerprint(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) with the sha256 of its bytes (or 'dir')."""
    return {str(p.relative_to(folder)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*"))}


def predict(source: Path | None, out: Path, model: Path, *extra) -> list:
    inputs = ["-i", source] if source is not None else ["-i", out]
    return ["predict", *inputs, "-o", out, "-m", model, "--preset", "preview", "-device", "cpu", *extra]


def assert_refused(code: int, err: str, culprit: Path, protected: Path, before: dict[str, str]) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR_PREFIX) and str(culprit) in lines[0] and "overwrite the input" in lines[0]
    assert "Traceback" not in err
    assert fingerprint(protected) == before, "a file in the input folder was changed, added or removed"


def test_output_folder_is_the_input_folder_of_a_single_file(tmp_path: Path, ct_model: Path, run_cli) -> None:
    scan = model_factory.make_case(tmp_path / "scans" / "scan.nii.gz", "3d", shape=SMALL)
    before = fingerprint(scan.parent)

    code, _, err = run_cli(predict(scan, scan.parent, ct_model))

    assert_refused(code, err, scan, scan.parent, before)


def test_output_folder_is_an_input_folder_of_unsuffixed_cases(tmp_path: Path, ct_model: Path, run_cli) -> None:
    folder = tmp_path / "scans"
    for seed, name in enumerate(("a.nii.gz", "b.nrrd")):
        model_factory.make_case(folder / name, "3d", shape=SMALL, seed=seed)
    before = fingerprint(folder)

    code, _, err = run_cli(predict(folder, folder, ct_model))

    assert_refused(code, err, folder / "a.nii.gz", folder, before)


def test_explicit_channels_written_over(tmp_path: Path, make_model, run_cli) -> None:
    model = make_model("two_channel")
    folder = tmp_path / "mr"
    first = model_factory.make_case(folder / "mr.nii.gz", "two_channel", shape=SMALL, channel=0)
    second = model_factory.make_case(folder / "mr_t2.nii.gz", "two_channel", shape=SMALL, channel=1)
    before = fingerprint(folder)

    code, _, err = run_cli(predict(None, folder, model, "--channels", first, second))

    assert_refused(code, err, first, folder, before)


def test_output_folder_is_a_symlink_to_the_input_folder(tmp_path: Path, ct_model: Path, run_cli) -> None:
    scan = model_factory.make_case(tmp_path / "scans" / "scan.nrrd", "3d", shape=SMALL)
    link = tmp_path / "results"
    link.symlink_to(scan.parent, target_is_directory=True)
    before = fingerprint(scan.parent)

    code, _, err = run_cli(predict(scan, link, ct_model))

    assert_refused(code, err, link / "scan.nrrd", scan.parent, before)


def test_input_is_a_symlink_into_the_output_folder(tmp_path: Path, ct_model: Path, run_cli) -> None:
    scan = model_factory.make_case(tmp_path / "out" / "scan.nii.gz", "3d", shape=SMALL)
    link = tmp_path / "incoming" / "scan.nii.gz"
    link.parent.mkdir()
    link.symlink_to(scan)
    before = fingerprint(scan.parent)

    code, _, err = run_cli(predict(link, scan.parent, ct_model))

    assert_refused(code, err, scan, scan.parent, before)


def test_report_written_over_the_input(tmp_path: Path, ct_model: Path, run_cli) -> None:
    scan = model_factory.make_case(tmp_path / "scans" / "ct_0000.nii.gz", "3d", shape=SMALL)
    before = fingerprint(scan.parent)

    code, _, err = run_cli(predict(scan, tmp_path / "out", ct_model, "--report", scan))

    assert_refused(code, err, scan, scan.parent, before)
    assert not (tmp_path / "out").exists(), "refused before any work"


def test_nnunet_named_input_folder_as_output_is_allowed(tmp_path: Path, ct_model: Path, run_cli) -> None:
    """case_0000.nii.gz becomes case.nii.gz: writing next to the inputs is fine when no input is replaced."""
    scan = model_factory.make_case(tmp_path / "scans" / "ct_0000.nii.gz", "3d", shape=SMALL)
    original = scan.read_bytes()

    code, _, err = run_cli(predict(scan, scan.parent, ct_model))

    assert code == 0, err
    assert scan.read_bytes() == original
    assert sitk.ReadImage(str(scan.parent / "ct.nii.gz")).GetSize() == sitk.ReadImage(str(scan)).GetSize()


def test_dicom_folder_files_and_metaimage_data_are_protected(tmp_path: Path) -> None:
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "IM0001.dcm").write_bytes(b"slice")
    header = model_factory.make_case(tmp_path / "mhd" / "scan.mhd", "3d", shape=SMALL)
    data_files = [p for p in header.parent.iterdir() if p != header]
    assert data_files, "SimpleITK writes a separate data file for .mhd"

    assert set(input_files([dicom, header])) == {dicom / "IM0001.dcm", header, *data_files}
    with pytest.raises(InputError, match="IM0001.dcm"):
        refuse_overwriting_inputs([dicom / "IM0001.dcm"], [dicom])
    with pytest.raises(InputError, match="overwrite the input"):
        refuse_overwriting_inputs([data_files[0]], [header])
    refuse_overwriting_inputs([dicom / "labels.nii.gz", tmp_path / "mhd" / "other.mhd"], [dicom, header])


def test_hard_link_to_an_input_is_refused(tmp_path: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"image")
    alias = tmp_path / "out" / "scan.nii.gz"
    alias.parent.mkdir()
    os.link(scan, alias)

    with pytest.raises(InputError, match="overwrite the input"):
        refuse_overwriting_inputs([alias], [scan])


def _staging_name(pid: int, host: str | None = None) -> str:
    import socket

    return f".ct.nii.gz.tilewise-tmp.{pid}@{host or socket.gethostname()}.k2j4x9ab"


def test_killed_runs_leftovers_are_removed_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = out / _staging_name(int(finished.stdout))
    (dead / "ct.nii.gz").parent.mkdir()
    (dead / "ct.nii.gz").write_bytes(b"half written")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / _staging_name(sleeper.pid)
        live.mkdir()
        old_elsewhere = out / _staging_name(12345, host="another-machine.example")
        old_elsewhere.mkdir()
        week_ago = time.time() - STALE_AFTER_S - 3600
        os.utime(old_elsewhere, (week_ago, week_ago))
        recent_elsewhere = out / _staging_name(12345, host="third-machine")
        recent_elsewhere.mkdir()
        users_own = out / ".ct.nii.gz.mine"
        users_own.mkdir()

        with atomic_output(out / "labels.nii.gz") as staging:
            staging.write_bytes(b"labels")

        remaining = sorted(p.name for p in out.iterdir())
        assert remaining == sorted([live.name, recent_elsewhere.name, users_own.name, "labels.nii.gz"])
        assert (out / "labels.nii.gz").read_bytes() == b"labels"
        assert clean_stale_staging(out) == [], "a live writer's and another machine's recent folders stay"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert clean_stale_staging(out) == [live]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "labels.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as staging:
            staging.write_bytes(np.zeros(10, np.uint8).tobytes())
            raise RuntimeError("disk unplugged")
    assert list(tmp_path.iterdir()) == []

"""Faults injected into ``tilewise batch`` (and SIGTERM into ``predict``): a full disk (a real 4 MB tmpfs filled
mid-run, then a resume with space), kill -9 then a resume, SIGTERM. Each asserts the exit code, the one-line
message and the files: nothing that is not whole under a final name, no staging leftovers, a resume that redoes
exactly what is broken."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import model_factory
import pytest
import SimpleITK as sitk
from batch_helpers import signal_after, spawn
from tilewise.engine.batch.claims import CLAIMS_DIR

SLOW = ("--preset", "reference", "-device", "cpu", "--backend", "torch")  # seconds per case: time to interrupt
FAST = ("--preset", "preview", "-device", "cpu", "--backend", "torch")
NII_HEADER = 352  # a NIfTI-1 header and its 4-byte extension flag


def summary_of(out: Path) -> dict:
    return json.loads((out / "batch_summary.json").read_text(encoding="utf-8"))


def statuses(out: Path) -> dict[str, str]:
    return {record["case"]: record["status"] for record in summary_of(out)["cases"]}


def leftovers(folder: Path) -> list[str]:
    """Staging folders, temporary files and claims still held (not the done records in the claims folder)."""
    names = [p.name for p in folder.iterdir() if (p.name.startswith(".") or "tmp" in p.name) and p.name != CLAIMS_DIR]
    claims = folder / CLAIMS_DIR
    if claims.is_dir():
        names += [f"{CLAIMS_DIR}/{p.name}" for p in claims.iterdir()
                  if not p.name.endswith(".claim") or json.loads(p.read_text())["state"] != "done"]
    return sorted(names)


def assert_whole(folder: Path, shape: tuple[int, int, int]) -> list[str]:
    """Every labels file under a final name in ``folder`` reads whole (an uncompressed .nii also has every byte);
    their names."""
    names = []
    for path in sorted(p for p in folder.glob("*.nii*") if not p.name.startswith(".")):  # not a staging folder
        if path.suffix == ".nii":
            assert path.stat().st_size == NII_HEADER + shape[0] * shape[1] * shape[2], f"{path.name} is truncated"
        assert sitk.ReadImage(str(path)).GetSize() == shape
        names.append(path.name)
    return names


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB file system (tmpfs); needs root, as the suite has in CI."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a full disk is tested on a small tmpfs, which only root may mount (the suite runs as root in CI)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=False,
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file that takes every free byte of ``disk`` (what another job on a shared disk does)."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_disk_full_mid_run_then_a_resume_with_space_equals_a_clean_run(tmp_path: Path, ct_model: Path,
                                                                       small_disk: Path, run_cli) -> None:
    shape = (64, 64, 64)  # an uncompressed uint8 .nii of 256 KiB each: 5 fit in 4 MB, the pre-flight lets them in
    folder, out, clean = tmp_path / "in", small_disk / "out", tmp_path / "clean"
    for n in range(5):
        model_factory.make_case(folder / f"f{n}_0000.nii", "3d", shape=shape, seed=80 + n)
    argv = ["batch", "-i", folder, "-m", ct_model, *SLOW]

    with spawn([*argv, "-o", out]) as process:  # the disk fills up once the first case is written
        while not (out / "f0.nii").exists() and process.poll() is None:
            time.sleep(0.05)
        filler = fill(small_disk)
        err = process.stderr.read()  # type: ignore[union-attr]
        code = process.wait(timeout=300)

    assert code == 3, err
    assert "Traceback" not in err
    reasons = [r["reason"] for r in summary_of(out)["cases"] if r["status"] == "failed"]
    assert reasons and all("the disk is full; free some space or choose another folder" in r for r in reasons)
    assert err.strip().splitlines()[-1].startswith("tilewise: batch finished: "), err
    kept = assert_whole(out, shape)  # nothing truncated under a final name
    assert "f0.nii" in kept and len(kept) < 5
    assert leftovers(out) == []

    filler.unlink()
    code, _, err = run_cli([*argv, "-o", out])

    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tilewise: batch finished: {5 - len(kept)} done, 0 failed, {len(kept)} skipped"), err
    assert run_cli([*argv, "-o", clean])[0] == 0
    for n in range(5):
        assert (out / f"f{n}.nii").read_bytes() == (clean / f"f{n}.nii").read_bytes(), f"f{n}.nii differs"
    assert leftovers(out) == []


def test_kill_9_mid_run_then_a_resume_finishes_the_rest(tmp_path: Path, ct_model: Path, run_cli) -> None:
    shape = (48, 48, 48)
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(6):
        model_factory.make_case(folder / f"k{n}_0000.nii.gz", "3d", shape=shape, seed=40 + n)
    argv = ["batch", "-i", folder, "-o", out, "-m", ct_model, *SLOW]

    code, err = signal_after(argv, "[1/6]", signal.SIGKILL)

    assert code == -signal.SIGKILL, err
    finished = assert_whole(out, shape)
    assert finished, "the first case was done before the kill"
    code, _, err = run_cli(argv)

    assert code == 0, err
    assert "Traceback" not in err
    status = statuses(out)
    assert set(status.values()) <= {"done", "skipped"} and len(status) == 6
    assert sorted(f"{case}.nii.gz" for case, s in status.items() if s == "skipped") == finished
    assert assert_whole(out, shape) == [f"k{n}.nii.gz" for n in range(6)]
    assert leftovers(out) == [], "the killed run's staging folders and claims are gone"


def test_sigterm_stops_a_batch_like_ctrl_c_with_exit_143(tmp_path: Path, ct_model: Path) -> None:
    shape = (48, 48, 48)
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(6):
        model_factory.make_case(folder / f"t{n}_0000.nii.gz", "3d", shape=shape, seed=50 + n)

    code, err = signal_after(["batch", "-i", folder, "-o", out, "-m", ct_model, *SLOW], "[1/6]", signal.SIGTERM)

    assert code == 143, err
    assert "Traceback" not in err
    assert "tilewise: terminated (SIGTERM); finishing the file being written, nothing half-written is kept" in err
    assert err.strip().splitlines()[-1].startswith("tilewise: batch terminated: "), err
    status = statuses(out)
    assert summary_of(out)["finished"] is False
    assert "interrupted" in status.values() and set(status.values()) <= {"done", "interrupted"}
    done = sorted(f"{case}.nii.gz" for case, s in status.items() if s == "done")
    assert done and assert_whole(out, shape) == done
    assert leftovers(out) == []


def test_sigterm_stops_predict_with_exit_143_and_nothing_half_written(tmp_path: Path, ct_model: Path) -> None:
    shape = (48, 48, 48)
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(3):
        model_factory.make_case(folder / f"p{n}_0000.nii.gz", "3d", shape=shape, seed=70 + n)

    code, err = signal_after(["predict", "-i", folder, "-o", out, "-m", ct_model, *SLOW, "--verbose"], " tiles, ",
                             signal.SIGTERM)

    assert code == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "tilewise: terminated (SIGTERM); no partial output was written", err
    assert 1 <= len(assert_whole(out, shape)) < 3
    assert leftovers(out) == []

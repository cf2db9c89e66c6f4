"""``tilewise batch``: the same bytes as ``tilewise predict``, resuming, failing cases, nnU-Net's sharding, DICOM
sub-folders and Ctrl-C."""
from __future__ import annotations

import json
import os
import pickle
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import model_factory
from batch_helpers import interrupt_after_first_case, leftovers
import numpy as np
import pytest
import SimpleITK as sitk
from tilewise.engine.batch.cases import collect_batch_cases, shard
from tilewise.engine.batch.claims import CLAIMS_DIR
from tilewise.engine.batch.pipeline import MemoryGate
from tilewise.engine.commands.cli import main
from tilewise.engine.events import CancelToken

SMALL = (24, 28, 32)  # numpy (z, y, x): a few tiles of the test model
FAST = ("--preset", "preview", "-device", "cpu", "--backend", "torch")  # no OpenVINO conversion: quick to start


def summary_of(out: Path) -> dict:
    return json.loads((out / "batch_summary.json").read_text(encoding="utf-8"))


def statuses(out: Path) -> dict[str, str]:
    return {record["case"]: record["status"] for record in summary_of(out)["cases"]}


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """``image`` (int16) as one DICOM file per slice, with the tags SimpleITK's series reader sorts by."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.16.1"
    for index in range(image.GetDepth()):
        plane = image[:, :, index]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", uid + ".0"), ("0020|000e", uid),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(index + 1)),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, index)))))):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{index:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    """Four cases: two NIfTI, one NRRD, one DICOM series sub-folder."""
    folder = tmp_path / "in"
    model_factory.make_case(folder / "a_0000.nii.gz", "3d", shape=SMALL, seed=1)
    model_factory.make_case(folder / "b_0000.nii.gz", "3d", shape=(28, 32, 30), seed=2)
    model_factory.make_case(folder / "c_0000.nrrd", "3d", shape=SMALL, seed=3)
    dicom_source = model_factory.make_case(tmp_path / "d.nii.gz", "3d", shape=SMALL, seed=4)
    write_dicom_series(sitk.Cast(sitk.ReadImage(str(dicom_source)), sitk.sitkInt16), folder / "series_d")
    return folder


def test_batch_writes_the_bytes_predict_writes(tmp_path: Path, ct_model: Path, cases: Path, run_cli) -> None:
    out, predicted = tmp_path / "out", tmp_path / "predicted"

    code, _, err = run_cli(["batch", "-i", cases, "-o", out, "-m", ct_model, *FAST, "--workers", "2"])

    assert code == 0, err
    for source in (cases, cases / "series_d"):  # predict reads a DICOM folder as one case
        assert run_cli(["predict", "-i", source, "-o", predicted, "-m", ct_model, *FAST])[0] == 0
    written = sorted(p.name for p in out.iterdir() if p.name not in ("batch_summary.json", CLAIMS_DIR))
    assert written == ["a.nii.gz", "b.nii.gz", "c.nrrd", "series_d.nii.gz"]
    for name in written:
        assert (out / name).read_bytes() == (predicted / name).read_bytes(), name
    summary = summary_of(out)
    assert summary["counts"] == {"done": 4, "failed": 0, "skipped": 0, "interrupted": 0, "elsewhere": 0}
    for record in summary["cases"]:
        assert record["device"] and record["worker"] and record["tiles"] > 0
        assert {"read", "preprocess", "sliding_window", "export", "write", "total"} <= set(record["timings"])
    assert leftovers(out) == []


def test_nnunet_exact_and_probabilities_match_predict(tmp_path: Path, ct_model: Path, run_cli) -> None:
    source = model_factory.make_case(tmp_path / "in" / "e_0000.nii.gz", "3d", shape=SMALL, seed=5)
    out, predicted = tmp_path / "out", tmp_path / "predicted"
    flags = ["-m", ct_model, "-device", "cpu", "--nnunet-exact", "--disable_tta", "--save_probabilities"]

    code, _, err = run_cli(["batch", "-i", source.parent, "-o", out, *flags])

    assert code == 0, err
    assert run_cli(["predict", "-i", source, "-o", predicted, *flags])[0] == 0
    assert (out / "e.nii.gz").read_bytes() == (predicted / "e.nii.gz").read_bytes()
    assert (out / "e.pkl").read_bytes() == (predicted / "e.pkl").read_bytes()
    np.testing.assert_array_equal(np.load(out / "e.npz")["probabilities"],
                                  np.load(predicted / "e.npz")["probabilities"])
    assert pickle.loads((out / "e.pkl").read_bytes())  # nnU-Net's properties, as predict writes them


def test_resume_skips_finished_cases_and_overwrite_redoes_them(tmp_path: Path, ct_model: Path, run_cli) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(3):
        model_factory.make_case(folder / f"r{n}_0000.nii.gz", "3d", shape=SMALL, seed=10 + n)
    argv = ["batch", "-i", folder, "-o", out, "-m", ct_model, *FAST]
    assert run_cli(argv)[0] == 0
    first = summary_of(out)
    old = time.time() - 3600  # outputs an hour old: any rewrite shows in their times
    for n in range(3):
        os.utime(out / f"r{n}.nii.gz", (old, old))
    (out / "r1.nii.gz").unlink()
    stamps = {n: (out / f"r{n}.nii.gz").stat().st_mtime_ns for n in (0, 2)}

    code, _, err = run_cli(argv)

    assert code == 0, err
    assert statuses(out) == {"r0": "skipped", "r1": "done", "r2": "skipped"}
    assert {n: (out / f"r{n}.nii.gz").stat().st_mtime_ns for n in (0, 2)} == stamps
    skipped = next(r for r in summary_of(out)["cases"] if r["case"] == "r0")
    assert skipped["earlier"] == next(r for r in first["cases"] if r["case"] == "r0")

    code, _, err = run_cli(argv)  # nothing left to do: no model is loaded
    assert code == 0, err
    assert set(statuses(out).values()) == {"skipped"}
    assert "backend" not in summary_of(out)

    code, _, err = run_cli([*argv, "--overwrite"])
    assert code == 0, err
    assert set(statuses(out).values()) == {"done"}
    assert all((out / f"r{n}.nii.gz").stat().st_mtime_ns != stamps[n] for n in (0, 2))


def test_resume_redoes_a_truncated_or_changed_output_and_keeps_the_whole_ones(tmp_path: Path, ct_model: Path,
                                                                              run_cli) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(3):
        model_factory.make_case(folder / f"v{n}_0000.nii.gz", "3d", shape=SMALL, seed=10 + n)
    argv = ["batch", "-i", folder, "-o", out, "-m", ct_model, *FAST]
    assert run_cli(argv)[0] == 0
    whole = {n: (out / f"v{n}.nii.gz").read_bytes() for n in range(3)}
    recorded = {r["case"]: r["files"] for r in summary_of(out)["cases"]}
    assert recorded["v0"]["v0.nii.gz"]["size"] == len(whole[0]) and len(recorded["v0"]["v0.nii.gz"]["sha256"]) == 64
    (out / "v1.nii.gz").write_bytes(whole[1][:-100])  # truncated, as a full disk once left it
    (out / "v2.nii.gz").write_bytes(whole[2][:-1] + bytes([whole[2][-1] ^ 1]))  # same size, one bit changed

    code, _, err = run_cli(argv)

    assert code == 0, err
    assert statuses(out) == {"v0": "skipped", "v1": "done", "v2": "done"}
    assert "tilewise: v1: redone, its earlier output cannot be kept (v1.nii.gz has " in err
    assert "tilewise: v2: redone, its earlier output cannot be kept (v2.nii.gz has changed since it was written" in err
    assert err.strip().splitlines()[-1].startswith("tilewise: batch finished: 2 done, 0 failed, 1 skipped"), err
    assert {n: (out / f"v{n}.nii.gz").read_bytes() for n in range(3)} == whole


def test_a_failing_case_is_recorded_and_the_others_run(tmp_path: Path, ct_model: Path, run_cli) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    model_factory.make_case(folder / "good1_0000.nii.gz", "3d", shape=SMALL, seed=20)
    model_factory.make_case(folder / "good2_0000.nii.gz", "3d", shape=SMALL, seed=21)
    (folder / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))  # gzip magic, garbage after it
    model_factory.make_case(folder / "extra_0000.nii.gz", "3d", shape=SMALL, seed=22)
    model_factory.make_case(folder / "extra_0001.nii.gz", "3d", shape=SMALL, seed=22)  # a channel too many
    vector = sitk.Compose([sitk.ReadImage(str(folder / "good1_0000.nii.gz"))] * 2)  # two channels in one file
    sitk.WriteImage(vector, str(folder / "vector_0000.nii.gz"))

    code, _, err = run_cli(["batch", "-i", folder, "-o", out, "-m", ct_model, *FAST])

    assert code == 3, err
    records = {r["case"]: r for r in summary_of(out)["cases"]}
    assert {case: r["status"] for case, r in records.items()} == {
        "broken": "failed", "extra": "failed", "good1": "done", "good2": "done", "vector": "failed"}
    assert "broken_0000.nii.gz" in records["broken"]["reason"] and "cannot read" in records["broken"]["reason"]
    assert "extra_0001" in records["extra"]["reason"]
    assert "2 channel(s) but the model needs 1" in records["vector"]["reason"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good1.nii.gz", "good2.nii.gz"]
    assert "broken failed" in err and "Traceback" not in err
    assert leftovers(out) == []


@pytest.mark.timeout(600)
def test_a_case_whose_record_cannot_be_made_fails_alone_and_the_batch_ends(tmp_path: Path, ct_model: Path, run_cli,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error while a finished case's record is made (on a writer thread) fails that case; before, the
    writer thread died with it and the batch waited for ever."""
    from tilewise.engine.batch import records

    folder, out = tmp_path / "in", tmp_path / "out"
    for seed, name in enumerate(("first", "second", "third")):
        model_factory.make_case(folder / f"{name}_0000.nii.gz", "3d", shape=SMALL, seed=30 + seed)
    real_fingerprints = records.fingerprints

    def fingerprints(paths):
        paths = list(paths)
        if any(path.name.startswith("second") for path in paths):
            raise ValueError("a record that cannot be made")
        return real_fingerprints(paths)

    monkeypatch.setattr(records, "fingerprints", fingerprints)
    code, _, err = run_cli(["batch", "-i", folder, "-o", out, "-m", ct_model, *FAST, "--workers", "1"])

    assert code != 0, err
    found = {r["case"]: r for r in summary_of(out)["cases"]}
    assert {case: r["status"] for case, r in found.items()} == {"first": "done", "second": "failed", "third": "done"}
    assert "a record that cannot be made" in found["second"]["reason"] and "Traceback" not in err


@pytest.mark.parametrize("num_parts", [1, 2, 3, 5])
def test_sharding_is_nnunets_split(tmp_path: Path, num_parts: int) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = tmp_path / "in"
    folder.mkdir()
    names = ["case_10", "case_2", "Case_3", "abc", "liver_007", "liver_07", "z"]
    for name in names:  # nnU-Net and the case list go by file names only
        (folder / f"{name}_0000.nii.gz").touch()
    nnunet = SimpleNamespace(dataset_json={"file_ending": ".nii.gz"})
    for part in range(num_parts):
        expected, _, _ = nnUNetPredictor._manage_input_and_output_lists(
            nnunet, str(folder), str(tmp_path / "out"), None, True, part, num_parts)
        ours = shard(collect_batch_cases(folder, tmp_path / "out", 1), num_parts, part)
        assert [[str(p) for p in case.case.inputs] for case in ours] == expected


def test_a_part_writes_only_its_cases(tmp_path: Path, ct_model: Path, run_cli) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(3):
        model_factory.make_case(folder / f"p{n}_0000.nii.gz", "3d", shape=SMALL, seed=30 + n)

    code, _, err = run_cli(["batch", "-i", folder, "-o", out, "-m", ct_model, *FAST, "-num_parts", "2",
                         "-part_id", "1"])

    assert code == 0, err
    written = sorted(p.name for p in out.iterdir() if p.name != CLAIMS_DIR)
    assert written == ["batch_summary.part1of2.json", "p1.nii.gz"]
    with pytest.raises(SystemExit):
        main(["batch", "-i", str(folder), "-o", str(out), "-m", str(ct_model), "-part_id"])
    assert run_cli(["batch", "-i", folder, "-o", out, "-m", ct_model, "-num_parts", "2", "-part_id", "2"])[0] == 2


def test_memory_gate_admits_cases_while_their_planned_peaks_fit_together() -> None:
    gate, cancel = MemoryGate(host_bytes=1000, device_bytes=1000), CancelToken()  # 850 bytes each usable
    assert gate.admit((500, 0), cancel)
    admitted = threading.Event()
    waiting = threading.Thread(target=lambda: gate.admit((500, 100), cancel) and admitted.set())
    waiting.start()
    assert not admitted.wait(0.5), "a second case was admitted beyond the budget"
    gate.release((500, 0))
    waiting.join(timeout=30)
    assert admitted.is_set()
    assert gate.admit((100, 700), cancel)  # fits next to the one in flight
    cancel.cancel()
    assert not gate.admit((900, 0), cancel)  # it would wait for memory: a cancel ends the wait
    for peaks in ((500, 100), (100, 700)):
        gate.release(peaks)
    assert gate.admit((5000, 5000), CancelToken())  # alone it always runs: the planner refused what cannot fit


def test_ctrl_c_keeps_finished_outputs_and_leaves_nothing_half_written(tmp_path: Path, ct_model: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(6):
        model_factory.make_case(folder / f"k{n}_0000.nii.gz", "3d", shape=(48, 48, 48), seed=40 + n)
    argv = ["batch", "-i", str(folder), "-o", str(out), "-m", str(ct_model), "--preset", "reference", "-device",
            "cpu", "--backend", "torch"]
    code, stderr = interrupt_after_first_case(argv)

    assert code == 130, stderr
    assert "Traceback" not in stderr
    status = statuses(out)
    done = sorted(case for case, s in status.items() if s == "done")
    assert done and "interrupted" in status.values() and set(status.values()) <= {"done", "interrupted"}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in done]
    for case in done:  # every kept output is whole
        assert sitk.ReadImage(str(out / f"{case}.nii.gz")).GetSize() == (48, 48, 48)
    assert leftovers(out) == []
    assert summary_of(out)["finished"] is False

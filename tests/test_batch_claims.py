"""Several ``tilewise batch`` processes on one folder: each case claimed once (an O_EXCL lock file), stale claims
of dead processes taken over, and the outputs' sizes and checksums that a resume re-checks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import model_factory
import pytest
import SimpleITK as sitk
from tilewise.engine.batch.claims import CLAIMS_DIR, STALE_AFTER_S, Claims
from tilewise.engine.batch.integrity import check_outputs, fingerprints

SHAPE = (48, 48, 48)


def spawn_batch(argv: list[str]) -> subprocess.Popen:
    """``tilewise batch argv`` as a child process (stderr piped, one line per case)."""
    return subprocess.Popen([sys.executable, "-m", "tilewise.engine", "batch", *map(str, argv)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_claim(claims: Claims, name: str, **fields) -> None:
    claims.folder.mkdir(parents=True, exist_ok=True)
    claims.path(name).write_text(json.dumps({"state": "running", "host": socket.gethostname(), **fields}))


def test_two_batch_processes_compute_each_case_once(tmp_path: Path, ct_model: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(8):
        model_factory.make_case(folder / f"s{n}_0000.nii.gz", "3d", shape=SHAPE, seed=60 + n)
    argv = ["-i", folder, "-o", out, "-m", ct_model, "--preset", "reference", "-device", "cpu", "--backend", "torch"]

    processes = [spawn_batch(argv) for _ in range(2)]
    try:
        errors = [process.communicate(timeout=600)[1] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()

    for process, stderr in zip(processes, errors):
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    summaries = [json.loads(path.read_text()) for path in sorted(out.glob("batch_summary*.json"))]
    assert len(summaries) == 2, "each process keeps its own summary"
    done = [(record["case"], summary["worker"]) for summary in summaries for record in summary["cases"]
            if record["status"] == "done"]
    assert sorted(case for case, _ in done) == [f"s{n}" for n in range(8)], "each case computed exactly once"
    assert len({worker for _, worker in done}) == 2, "both processes computed cases"
    for summary in summaries:
        assert {record["status"] for record in summary["cases"]} <= {"done", "elsewhere", "skipped"}
    for n in range(8):  # every output present and whole, and as recorded
        output = out / f"s{n}.nii.gz"
        assert sitk.ReadImage(str(output)).GetSize() == SHAPE
        record = next(r for s in summaries for r in s["cases"] if r["case"] == f"s{n}" and r["status"] == "done")
        assert check_outputs([output], record["files"]) is None
    claims = sorted((out / CLAIMS_DIR).iterdir())
    assert [p.name for p in claims] == [f"s{n}.claim" for n in range(8)], "no claim left but the done records"
    assert all(json.loads(p.read_text())["state"] == "done" for p in claims)


def test_a_stale_claim_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    claims = Claims(tmp_path)
    write_claim(claims, "killed", pid=dead_pid(), started_epoch=time.time(), claimed_epoch=time.time())
    assert claims.claim("killed", []) is None  # taken over
    assert json.loads(claims.path("killed").read_text())["pid"] == os.getpid()

    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            time.sleep(0.5)
            write_claim(claims, "running", pid=alive.pid, started_epoch=time.time(), claimed_epoch=time.time())
            assert claims.claim("running", []) == json.loads(claims.path("running").read_text())
            hour_ago = time.time() - 3600  # a claim older than the process that now has its id
            write_claim(claims, "pid_reused", pid=alive.pid, started_epoch=hour_ago, claimed_epoch=hour_ago)
            assert claims.claim("pid_reused", []) is None, "a process younger than the claim is not its owner"
        finally:
            alive.kill()

    now = time.time()
    write_claim(claims, "other_host", host="elsewhere.example", pid=1, started_epoch=now, claimed_epoch=now)
    assert claims.claim("other_host", []) is not None, "another host's fresh claim is kept"
    old = now - STALE_AFTER_S - 60
    write_claim(claims, "old_host", host="elsewhere.example", pid=1, started_epoch=old, claimed_epoch=old)
    assert claims.claim("old_host", []) is None, "another host's day-old claim is taken over"

    claims.release_all()
    assert sorted(p.name for p in claims.folder.iterdir()) == ["other_host.claim", "running.claim"]


def test_a_done_claim_is_kept_only_while_its_outputs_check(tmp_path: Path) -> None:
    output = tmp_path / "d.nii"
    output.write_bytes(b"x" * 1000)
    first = Claims(tmp_path)
    assert first.claim("d", [output]) is None
    first.finish("d", fingerprints([output]))
    assert first.done_files("d") == {"d.nii": fingerprints([output])["d.nii"]}

    later = Claims(tmp_path)  # a run started after the case was done: the plan skipped it or redoes it
    later.started = time.time() + 1
    assert later.claim("d", [output]) is None, "a done claim older than the run is taken when the case is redone"
    later.release("d")

    sharing = Claims(tmp_path)
    sharing.started = time.time() - 60  # started before the other process finished the case
    Claims(tmp_path).claim("d", [output])
    done = Claims(tmp_path)
    done.held.add("d")
    done.finish("d", fingerprints([output]))
    assert sharing.claim("d", [output])["state"] == "done", "finished by another process during this run"
    output.write_bytes(b"x" * 999)
    assert sharing.claim("d", [output]) is None, "a truncated output is redone"


@pytest.mark.parametrize("change", ["missing", "truncated", "changed"])
def test_check_outputs_finds_a_missing_truncated_or_changed_file(tmp_path: Path, change: str) -> None:
    output = tmp_path / "c.nii.gz"
    output.write_bytes(os.urandom(5000))
    recorded = fingerprints([output])
    assert check_outputs([output], recorded) is None
    if change == "missing":
        output.unlink()
    elif change == "truncated":
        output.write_bytes(output.read_bytes()[:4000])
    else:
        output.write_bytes(os.urandom(5000))
    why = check_outputs([output], recorded)
    assert why is not None and "c.nii.gz" in why
    assert check_outputs([output], None) == "no record of its outputs' sizes and checksums"


def test_clear_stale_removes_only_a_dead_owners_running_claim(tmp_path: Path) -> None:
    claims = Claims(tmp_path)
    now = time.time()
    write_claim(claims, "killed_after_finishing", pid=dead_pid(), started_epoch=now, claimed_epoch=now)
    write_claim(claims, "other_host", host="elsewhere.example", pid=1, started_epoch=now, claimed_epoch=now)
    write_claim(claims, "done", state="done", pid=dead_pid(), started_epoch=now, claimed_epoch=now, files={})
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            time.sleep(0.5)
            write_claim(claims, "live", pid=alive.pid, started_epoch=time.time(), claimed_epoch=time.time())
            cleared = {name: claims.clear_stale(name) for name in ("killed_after_finishing", "other_host", "done",
                                                                    "live", "never_claimed")}
        finally:
            alive.kill()
    assert cleared == {"killed_after_finishing": True, "other_host": False, "done": False, "live": False,
                       "never_claimed": False}
    assert sorted(p.name for p in claims.folder.iterdir()) == ["done.claim", "live.claim", "other_host.claim"]

"""``tilewise batch --ray`` on a real local Ray cluster on the CPU: the single-process batch's bytes, the summary,
resuming, a failing case, a killed actor's case retried elsewhere, Ctrl-C, and a clear error without Ray."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import model_factory
import pytest
from batch_helpers import interrupt_after_first_case, leftovers
from tilewise.engine.commands.cli import main
from tilewise.engine.distributed.cluster import plan_actors

ray = pytest.importorskip("ray")

SHAPE = (40, 48, 56)
FAST = ("-m", "demo", "--preset", "preview", "-device", "cpu", "--backend", "torch")
SLOWER = ("-m", "demo", "--preset", "balanced", "-device", "cpu", "--backend", "torch")  # 5 folds: seconds a case


@pytest.fixture(scope="module")
def cluster():
    """One local 2-CPU cluster for the module (Ray takes seconds to start); every batch here joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def make_cases(folder: Path, names: list[str]) -> Path:
    for seed, name in enumerate(names):
        model_factory.make_case(folder / f"{name}_0000.nii.gz", "3d", shape=SHAPE, seed=50 + seed)
    return folder


def records(out: Path) -> dict[str, dict]:
    summary = json.loads((out / "batch_summary.json").read_text(encoding="utf-8"))
    return {record["case"]: record for record in summary["cases"]}


def header(out: Path) -> dict:
    return json.loads((out / "batch_summary.json").read_text(encoding="utf-8"))


def labels(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.nii.gz"))}


def test_ray_writes_the_single_process_bytes_and_resumes(cluster, tmp_path: Path, run_cli) -> None:
    folder = make_cases(tmp_path / "in", ["a", "b", "c", "d"])
    here, there = tmp_path / "here", tmp_path / "there"
    assert run_cli(["batch", "-i", folder, "-o", here, *FAST])[0] == 0

    code, _, err = run_cli(["batch", "-i", folder, "-o", there, *FAST, "--ray", "auto", "--ray-actors", "2"])

    assert code == 0, err
    assert labels(there) == labels(here) and len(labels(here)) == 4
    assert header(there)["ray"] == {"address": cluster, "actors": 2, "num_cpus": 1, "num_gpus": 0}
    assert header(there)["backend"] == header(here)["backend"]
    for record in records(there).values():
        assert record["status"] == "done" and record["worker"].startswith("ray actor ") and record["retries"] == []
        assert record["device"] == "cpu" and record["tiles"] > 0 and "sliding_window" in record["timings"]
    assert leftovers(there) == []

    old = time.time() - 3600  # an hour old: any rewrite shows
    for name in ("a", "c", "d"):
        os.utime(there / f"{name}.nii.gz", (old, old))
    (there / "b.nii.gz").unlink()
    code, _, err = run_cli(["batch", "-i", folder, "-o", there, *FAST, "--ray", "auto"])
    assert code == 0, err
    assert {case: r["status"] for case, r in records(there).items()} == {
        "a": "skipped", "b": "done", "c": "skipped", "d": "skipped"}
    assert all((there / f"{n}.nii.gz").stat().st_mtime == pytest.approx(old) for n in ("a", "c", "d"))
    assert labels(there) == labels(here)

    code, _, err = run_cli(["batch", "-i", folder, "-o", there, *FAST, "--ray", "auto"])
    assert code == 0, err  # nothing to do: no actor is started
    assert "ray" not in header(there) and {r["status"] for r in records(there).values()} == {"skipped"}


def test_a_failing_case_is_recorded_once_and_the_others_run(cluster, tmp_path: Path, run_cli) -> None:
    folder = make_cases(tmp_path / "in", ["good1", "good2"])
    (folder / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))  # gzip magic, garbage after it
    model_factory.make_case(folder / "extra_0001.nii.gz", "3d", shape=SHAPE, seed=3)  # channel 0 missing
    out = tmp_path / "out"

    code, _, err = run_cli(["batch", "-i", folder, "-o", out, *FAST, "--ray", "auto", "--ray-actors", "1"])

    assert code == 3, err
    found = records(out)
    assert {case: r["status"] for case, r in found.items()} == {
        "broken": "failed", "extra": "failed", "good1": "done", "good2": "done"}
    assert "cannot read" in found["broken"]["reason"] and found["broken"]["worker"].startswith("ray actor ")
    assert found["broken"]["retries"] == []  # a case's own failure is not retried
    assert "broken failed" in err and "Traceback" not in err
    assert sorted(labels(out)) == ["good1.nii.gz", "good2.nii.gz"] and leftovers(out) == []


def actor_pids(title: bytes) -> list[int]:
    """Processes whose title starts with ``title`` (Ray names an actor's process 'ray::Class', and
    'ray::Class.method' while it runs that method)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_killed_actors_case_is_retried_on_another(cluster, tmp_path: Path, capfd, run_cli) -> None:
    folder = make_cases(tmp_path / "in", ["k0", "k1", "k2"])
    here, there = tmp_path / "here", tmp_path / "there"
    assert run_cli(["batch", "-i", folder, "-o", here, *SLOWER])[0] == 0
    result: dict = {}
    argv = ["batch", "-i", folder, "-o", there, *SLOWER, "--ray", "auto", "--ray-actors", "2"]
    batch = threading.Thread(target=lambda: result.update(code=main([str(a) for a in argv])))
    batch.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and batch.is_alive() and time.monotonic() < deadline:
        if pids := actor_pids(b"ray::BatchWorker.run"):
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)  # a real crash of an actor process in the middle of a case
        time.sleep(0.05)
    batch.join(timeout=240)

    assert killed is not None, "no actor was seen running a case"
    assert result.get("code") == 0, capfd.readouterr().err
    found = records(there)
    assert {r["status"] for r in found.values()} == {"done"}
    retried = [r for r in found.values() if r["retries"]]
    assert len(retried) == 1 and f":{killed} " in retried[0]["retries"][0] and "died" in retried[0]["retries"][0]
    assert f":{killed} " not in retried[0]["worker"]  # it was finished by another actor
    assert labels(there) == labels(here)
    assert leftovers(there) == []


def test_ctrl_c_on_a_ray_batch_keeps_finished_outputs(cluster, tmp_path: Path) -> None:
    folder = make_cases(tmp_path / "in", [f"c{n}" for n in range(6)])
    out = tmp_path / "out"
    argv = ["batch", "-i", str(folder), "-o", str(out), *SLOWER, "--ray", cluster, "--ray-actors", "1"]
    code, stderr = interrupt_after_first_case(argv)

    assert code == 130, stderr
    assert "Traceback" not in stderr
    status = {case: r["status"] for case, r in records(out).items()}
    done = sorted(case for case, s in status.items() if s == "done")
    assert done and "interrupted" in status.values() and set(status.values()) <= {"done", "interrupted"}
    assert sorted(labels(out)) == [f"{case}.nii.gz" for case in done] and leftovers(out) == []
    assert header(out)["finished"] is False
    deadline = time.monotonic() + 30
    while actor_pids(b"ray::BatchWorker") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert actor_pids(b"ray::BatchWorker") == []  # the batch ended its actors


def test_without_ray_the_flag_says_what_to_install(tmp_path: Path, run_cli, monkeypatch) -> None:
    folder = make_cases(tmp_path / "in", ["a"])
    monkeypatch.setitem(sys.modules, "ray", None)  # what 'import ray' does where the extra is not installed

    code, _, err = run_cli(["batch", "-i", folder, "-o", tmp_path / "out", *FAST, "--ray", "auto"])

    assert code == 2
    assert err.strip() == 'tilewise: error: --ray: needs Ray, an optional extra: pip install "tilewise[ray]"'
    assert not (tmp_path / "out").exists()


def test_actor_plan_one_per_gpu_else_one_per_node_sharing_its_cpus() -> None:
    gpu_nodes = [{"Alive": True, "Resources": {"CPU": 16, "GPU": 2}}, {"Alive": True, "Resources": {"CPU": 8}},
                 {"Alive": True, "Resources": {"CPU": 8, "GPU": 1}}]
    assert plan_actors(gpu_nodes, None).__dict__ == {"count": 3, "num_cpus": 8, "num_gpus": 1}
    cpu_nodes = [{"Alive": True, "Resources": {"CPU": 4}}, {"Alive": False, "Resources": {"CPU": 64}},
                 {"Alive": True, "Resources": {"CPU": 6}}]
    assert plan_actors(cpu_nodes, None).__dict__ == {"count": 2, "num_cpus": 4, "num_gpus": 0}
    assert plan_actors(cpu_nodes, 4).__dict__ == {"count": 4, "num_cpus": 2, "num_gpus": 0}
    assert plan_actors([{"Resources": {"CPU": 2}}], 2).__dict__ == {"count": 2, "num_cpus": 1, "num_gpus": 0}
    for nodes, requested in ((gpu_nodes, 4), (cpu_nodes, 0)):
        with pytest.raises(Exception, match="--ray-actors"):
            plan_actors(nodes, requested)


def test_a_model_the_actors_cannot_load_is_the_batchs_error(cluster, tmp_path: Path, run_cli) -> None:
    folder = make_cases(tmp_path / "in", ["a"])
    expected = run_cli(["batch", "-i", folder, "-o", tmp_path / "here", *FAST, "-f", "9"])

    code, _, err = run_cli(["batch", "-i", folder, "-o", tmp_path / "there", *FAST, "-f", "9", "--ray", "auto"])

    assert expected.code == 2 and "fold" in expected.err
    assert (code, err) == (expected.code, expected.err)  # the actor's error, as the single-process batch prints it


def test_strict_input_fails_a_case_on_the_actors_too(cluster, tmp_path: Path, run_cli) -> None:
    """--strict-input reaches the actors: the demo brain model's actor fails a CT with the reason, as at home."""
    import shutil

    from image_factory import ct_like
    from tilewise.resources import sample_path

    ct_like(tmp_path / "in" / "ct_0000.nii.gz")
    shutil.copy(sample_path(), tmp_path / "in" / "brain_0000.nii.gz")  # what the demo model was trained on
    out = tmp_path / "out"

    code, _, err = run_cli(["batch", "-i", tmp_path / "in", "-o", out, *FAST, "--strict-input", "--ray", "auto"])

    assert code == 3, err
    cases = records(out)
    assert cases["ct"]["status"] == "failed" and "looks like CT" in cases["ct"]["reason"]
    assert cases["brain"]["status"] == "done"
    assert not (out / "ct.nii.gz").exists() and (out / "brain.nii.gz").exists()

"""The DICOM node's spool and resume rules, in-process and without a model or a network: when a series is
complete, what a cut delivery does, the versions of a series sent again or completed later, seals a dead process
left, and what a restart does with a version in each state (:mod:`tilewise.engine.pacs.spool`, ``sealing``,
``segmenter``). The node itself, with real processes and Orthanc, is in ``test_pacs_listen.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tilewise.engine.batch.claims import HOST, Claims
from tilewise.engine.events import CancelToken
from tilewise.engine.pacs.common import PacsError
from tilewise.engine.pacs.sealing import recover, seal, supersede_previous
from tilewise.engine.pacs.segmenter import RETRY, VersionSegmenter
from tilewise.engine.pacs.spool import Journal, Spool, valid_uid

SERIES = "1.2.3.4"


def _spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", Journal(tmp_path / "spool" / "journal.jsonl", quiet=True))


def _deliver(spool: Spool, names: list[str], content: bytes = b"x", number: int = 1, series: str = SERIES,
             cut: bool = False) -> None:
    marker = spool.open_marker(number)
    for name in names:
        spool.store_instance(series, name, content + name.encode(), marker)
    spool.end_delivery(series, marker, cut)


def _events(spool: Spool, event: str) -> list[dict]:
    lines = (spool.root / "journal.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["event"] == event]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_series_is_complete_after_its_release_and_the_settle_time(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    marker = spool.open_marker(1)
    spool.store_instance(SERIES, "1.1", b"a", marker)
    assert spool.arrivals(0.0) == ([], 1, [])  # its association is still open
    spool.end_delivery(SERIES, marker, cut=False)
    assert spool.arrivals(60.0) == ([], 1, [])  # released, but settling
    assert spool.arrivals(0.0) == ([SERIES], 0, [])
    ref = seal(spool, SERIES)
    assert ref is not None and ref.number == 1 and os.listdir(ref.instances) == ["1.1.dcm"]
    assert spool.read_state(ref)["state"] == "queued" and not (spool.incoming / SERIES).exists()
    assert os.listdir(spool.tmp) == []
    assert not valid_uid("../1.2") and not valid_uid("1." * 40) and valid_uid("1.2.840.10008")


def test_a_cut_delivery_is_held_until_a_delivery_of_the_series_is_released(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    _deliver(spool, ["1.1", "1.2"], cut=True)
    assert spool.arrivals(0.0) == ([], 0, [SERIES])
    _deliver(spool, ["1.1", "1.2", "1.3"], number=2)  # sent again, whole
    assert spool.arrivals(0.0) == ([SERIES], 0, [])
    ref = seal(spool, SERIES)
    assert ref is not None and sorted(os.listdir(ref.instances)) == ["1.1.dcm", "1.2.dcm", "1.3.dcm"]


def test_a_delivery_of_a_dead_process_is_held(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    folder = spool.incoming / SERIES
    folder.mkdir()
    (folder / "1.1.dcm").write_bytes(b"a")
    (folder / f".open@{HOST}@{_dead_pid()}@1").touch()
    assert spool.arrivals(0.0) == ([], 0, [SERIES])
    assert [entry["series"] for entry in _events(spool, "held")] == [SERIES]


def test_versions_instances_that_arrive_after_the_seal(tmp_path: Path) -> None:
    spool, claims = _spool(tmp_path), Claims(tmp_path / "spool")
    _deliver(spool, ["1.1", "1.2"])
    first = seal(spool, SERIES)
    _deliver(spool, ["1.3"], number=2)  # a late instance: the series again, with it
    second = seal(spool, SERIES)
    assert first is not None and second is not None and second.number == 2
    assert sorted(os.listdir(second.instances)) == ["1.1.dcm", "1.2.dcm", "1.3.dcm"]
    supersede_previous(spool, second, claims)
    assert spool.read_state(first)["state"] == "superseded" and spool.read_state(second)["state"] == "queued"

    _deliver(spool, ["1.1", "1.2", "1.3"], number=3)  # the same series sent again, the same bytes
    third = seal(spool, SERIES)
    assert third is not None and spool.read_state(third) | {"duplicate_of": 2} == spool.read_state(third)
    assert spool.read_state(third)["state"] == "duplicate"
    supersede_previous(spool, third, claims)
    assert spool.read_state(second)["state"] == "queued"  # a duplicate supersedes nothing

    _deliver(spool, ["1.2"], content=b"changed", number=4)  # an instance replaced with other bytes
    fourth = seal(spool, SERIES)
    assert fourth is not None and spool.read_state(fourth)["state"] == "queued"
    assert (fourth.instances / "1.2.dcm").read_bytes() == b"changed1.2"


def test_a_seal_left_by_a_dead_process_is_finished_on_start(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    work = spool.series / SERIES / f".seal@{HOST}@{_dead_pid()}@abc"
    (work / "instances").mkdir(parents=True)
    (work / "instances" / "1.1.dcm").write_bytes(b"a")
    (work / "instances" / ".aborted").touch()
    (spool.tmp / f"@{HOST}@{_dead_pid()}@x.part").write_bytes(b"half")
    [ref] = recover(spool)
    assert ref.number == 1 and os.listdir(ref.instances) == ["1.1.dcm"] and not work.exists()
    assert os.listdir(spool.tmp) == []


class _Stages:
    """Stands in for the model's stages: 'segments' by writing the SEG file, and counts the runs."""

    def __init__(self) -> None:
        self.runs = 0

    def run_stage(self, name: str, item, cancel) -> None:
        item.timings[name] = 0.0
        if name == "write":
            self.runs += 1
            item.case.output.write_bytes(b"SEG of " + item.case.name.encode())


class _Server:
    """Stands in for the PACS: records what was stored, or refuses while ``down``."""

    name = "PACS@test:104"

    def __init__(self) -> None:
        self.stored: list[bytes] = []
        self.down = False

    def store(self, path: Path) -> tuple[str, str, str]:
        if self.down:
            raise PacsError(self.name, "cannot connect (Connection refused)")
        self.stored.append(path.read_bytes())
        return "9.1", "9.2", "9.3"


@pytest.fixture
def queued(tmp_path: Path):
    spool = _spool(tmp_path)
    _deliver(spool, ["1.1"])
    ref = seal(spool, SERIES)
    stages, server = _Stages(), _Server()
    segmenter = VersionSegmenter(spool, Claims(spool.root), stages, server, CancelToken())  # type: ignore[arg-type]
    return spool, ref, stages, server, segmenter


def test_a_restart_sends_a_seg_written_but_not_sent_without_segmenting_again(queued) -> None:
    spool, ref, stages, server, segmenter = queued
    server.down = True
    assert segmenter.handle(ref) == RETRY  # segmented, but the PACS did not take it
    assert spool.read_state(ref)["state"] == "written" and stages.runs == 1
    server.down = False
    assert segmenter.handle(ref) == "sent" and stages.runs == 1 and server.stored == [b"SEG of " + SERIES.encode()]
    assert segmenter.handle(ref) == "sent" and stages.runs == 1 and len(server.stored) == 1  # done: nothing
    assert [len(_events(spool, name)) for name in ("segmented", "send-failed", "sent")] == [1, 1, 1]


def test_a_seg_changed_on_the_disk_is_segmented_again(queued) -> None:
    spool, ref, stages, server, segmenter = queued
    server.down = True
    segmenter.handle(ref)
    segmenter.output(ref).write_bytes(b"SEG of 9.9.9.9")  # the same size, other bytes
    server.down = False
    assert segmenter.handle(ref) == "sent" and stages.runs == 2
    assert server.stored == [b"SEG of " + SERIES.encode()]
    assert "changed since it was written" in _events(spool, "redo")[0]["reason"]


def test_a_version_another_process_holds_is_left_to_it(queued, tmp_path: Path) -> None:
    spool, ref, stages, _, segmenter = queued
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        claim = Claims(spool.root).path(ref.name)
        claim.parent.mkdir(exist_ok=True)
        claim.write_text(json.dumps({"state": "running", "pid": other.pid, "host": HOST,
                                     "started_epoch": time.time(), "claimed_epoch": time.time()}))
        assert segmenter.handle(ref) == "elsewhere" and stages.runs == 0
    finally:
        other.kill()
        other.wait()
    assert segmenter.handle(ref) == "sent" and stages.runs == 1  # its owner died: taken over

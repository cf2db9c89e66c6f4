"""``tilewise listen``, the DICOM node, as real processes with a real Orthanc (:mod:`orthanc_fixture`) as the PACS
that receives the SEGs; series are sent to the node with pynetdicom's C-STORE, as a modality or a PACS would.

Three series sent at once are each segmented once, through a kill -9 of the node mid-way and a restart; a malformed
object is refused and the node goes on serving; a delivery cut mid-series is held, not segmented, until the series
is sent again; a full disk answers 'out of resources' (root: a real small tmpfs); a SEG sent to the node is not
segmented; a series sent twice is segmented once; SIGTERM exits 143.
The spool's rules without processes are in ``test_pacs_spool.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pydicom
import pytest
from dicom_factory import resampled_sample, write_ct_series
from fault_disks import IS_ROOT, fill, small_tmpfs
from orthanc_fixture import PACS_AET, free_port, missing_orthanc, orthanc_server
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info

FAST = ("-m", "demo", "--preset", "preview", "-device", "cpu", "--backend", "torch")  # no OpenVINO conversion
FAILURE = range(0xA000, 0xD000)
"""C-STORE failure statuses (out of resources, not the SOP class, cannot understand)."""


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Orthanc with its DICOM service (empty: the node's SEGs land there) and four small CT series on disk."""
    reason = missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("pynetdicom", reason="the pacs extra is not installed: pip install 'tilewise[pacs]'")
    root = tmp_path_factory.mktemp("listen")
    series = {}
    for n in range(4):
        write_ct_series(resampled_sample((48, 48, 16), (4.5, 4.5, 5.5)), root / f"s{n}")
        files = sorted((root / f"s{n}").iterdir())
        series[str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)] = files
    with orthanc_server(root / "orthanc", dicom=True) as orthanc:
        yield {"orthanc": orthanc, "series": series, "root": root}


class NodeProcess:
    """``tilewise listen ARGV`` as a child process; its stderr lines collected as they come."""

    def __init__(self, argv: list) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tilewise.engine", "listen", *map(str, argv)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, words: str, timeout: float = 180.0) -> None:
        """Until a line holds ``words``; fails with what the node said when it exits or times out first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(words in line for line in self.lines):
                assert self.process.poll() is None or self._reader.is_alive(), self.text
                assert time.monotonic() < deadline, f"no '{words}' within {timeout:.0f}s:\n{self.text}"
                self._changed.wait(0.2)

    def wait(self, timeout: float = 240.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self.process.stderr.close()  # type: ignore[union-attr]
        return code

    def __enter__(self) -> NodeProcess:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


def node_argv(pacs: dict, spool: Path, port: int) -> list:
    target = f"{PACS_AET}@127.0.0.1:{pacs['orthanc'].dicom_port}"
    return ["--port", port, "--bind", "127.0.0.1", *FAST, "--send", target, "--spool", spool, "--settle", "1"]


def send(port: int, items: list, abort_after: int | None = None, raw: bool = False) -> list[int]:
    """C-STORE ``items`` (files or datasets) to the node on one association; their statuses. With
    ``abort_after``, the association is aborted after that many (a delivery cut mid-series); with ``raw``, each
    file's bytes go as they are (pynetdicom's chunked sending: not decoded)."""
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import CTImageStorage, SegmentationStorage, Verification

    entity = AE(ae_title="MODALITY")
    for syntax in (CTImageStorage, SegmentationStorage, Verification):
        entity.add_requested_context(syntax)
    link = entity.associate("127.0.0.1", port, ae_title="TILEWISE")
    assert link.is_established
    statuses = []
    _config.STORE_SEND_CHUNKED_DATASET = raw
    try:
        for item in items[:abort_after]:
            dataset = item if raw or isinstance(item, pydicom.Dataset) else pydicom.dcmread(item)
            statuses.append(int(link.send_c_store(dataset).Status))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    if abort_after is not None:
        link.abort()
    else:
        assert int(link.send_c_echo().Status) == 0  # still serving
        link.release()
    return statuses


def journal(spool: Path, event: str) -> list[dict]:
    path = spool / "journal.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [entry for entry in entries if entry["event"] == event]


def segs_in_orthanc(pacs: dict) -> dict[str, list[pydicom.Dataset]]:
    """The SEGs Orthanc holds, by the series they reference."""
    orthanc = pacs["orthanc"]
    found: dict[str, list[pydicom.Dataset]] = {}
    with orthanc.session() as session:
        ids = session.post(f"{orthanc.http_url}/tools/find", json={"Level": "Instance", "Query": {"Modality": "SEG"}},
                           timeout=30).json()
        for instance in ids:
            data = session.get(f"{orthanc.http_url}/instances/{instance}/file", timeout=30).content
            path = pacs["root"] / f"{instance}.dcm"
            path.write_bytes(data)
            seg = pydicom.dcmread(path)
            found.setdefault(str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID), []).append(seg)
    return found


def test_three_series_sent_at_once_are_each_segmented_once_through_a_kill_9(pacs: dict, tmp_path: Path) -> None:
    spool, port = tmp_path / "spool", free_port()
    three = dict(list(pacs["series"].items())[:3])
    with NodeProcess(node_argv(pacs, spool, port)) as node:
        node.wait_for("listening as TILEWISE")
        statuses: list[list[int]] = []
        senders = [threading.Thread(target=lambda files=files: statuses.append(send(port, files)))
                   for files in three.values()]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=120)
        assert [set(s) for s in statuses] == [{0}] * 3
        node.wait_for("stored on")
        node.process.send_signal(signal.SIGKILL)
        assert node.wait() == -signal.SIGKILL
    assert 1 <= len(journal(spool, "sent")) < 3, "killed mid-way: one SEG sent, the others not yet"

    with NodeProcess([*node_argv(pacs, spool, port), "--once"]) as node:
        code = node.wait()
    assert code == 0, node.text
    assert "Traceback" not in node.text and "Phantom" not in node.text + (spool / "journal.jsonl").read_text()
    segs = segs_in_orthanc(pacs)
    for uid, files in three.items():
        [seg] = segs[uid]  # one SEG per series, referencing all its instances
        assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(files)
        assert [e["version"] for e in journal(spool, "sealed") if e["series"] == uid] == [1]
        assert [e["series"] for e in journal(spool, "segmented")].count(uid) == 1, "segmented once"
        assert [e["series"] for e in journal(spool, "sent")].count(uid) == 1
    assert os.listdir(spool / "incoming") == [] and os.listdir(spool / "tmp") == []
    assert [p.name for p in (spool / ".tilewise-claims").iterdir()] == [], "no claim left held"


def test_a_malformed_object_is_refused_and_a_cut_delivery_is_held_until_sent_again(pacs: dict,
                                                                                     tmp_path: Path) -> None:
    disk, port = tmp_path / "disk", free_port()
    spool = disk / "spool"
    uid, files = list(pacs["series"].items())[3]
    garbage = tmp_path / "garbage.dcm"  # a valid file meta, then bytes that are no data set
    header = pydicom.dcmread(files[0])
    header.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
    with open(garbage, "wb") as handle:
        handle.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(handle), header.file_meta)
        handle.write(b"\x08\x00\x18\x00UI\xff\x7f" + b"\x01" * 40)
    no_series = pydicom.dcmread(files[0])
    del no_series.SeriesInstanceUID
    escaping = pydicom.dcmread(files[0])
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        escaping.SeriesInstanceUID = "../../escaped"  # a name that would lead out of the spool

    with small_tmpfs(disk, "8m") if IS_ROOT else nullcontext(), NodeProcess(node_argv(pacs, spool, port)) as node:
        node.wait_for("listening as TILEWISE")
        refused = send(port, [garbage], raw=True) + send(port, [no_series, escaping])
        assert all(status in FAILURE for status in refused), [hex(s) for s in refused]
        if IS_ROOT:  # a full disk (a real one: a small tmpfs): 'out of resources', and serving on
            fill(disk, leave=4096)
            assert send(port, files[:1]) == [0xA700]
            (disk / "filler.bin").unlink()
            node.wait_for("the spool cannot hold it (No space left on device); answered 'out of resources'")

        assert send(port, files, abort_after=5) == [0] * 5  # cut mid-series
        node.wait_for(f"series {uid}: the delivery from MODALITY was cut after 5 instance(s)")
        time.sleep(3)  # three settle times: held, not sealed
        assert journal(spool, "sealed") == [] and journal(spool, "segmented") == []

        assert set(send(port, files)) == {0}  # sent again, whole: complete
        node.wait_for("stored on")
        [seg] = segs_in_orthanc(pacs)[uid]
        assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(files)

        seg.file_meta = pydicom.dataset.FileMetaDataset()
        seg.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        assert send(port, [seg]) == [0]  # a SEG routed back to the node: taken, never segmented
        node.wait_for(f"series {seg.SeriesInstanceUID}: 1 object(s) from MODALITY hold no image")
        assert set(send(port, files)) == {0}  # the same series sent again
        node.wait_for("received again, the same as version 1; not segmented again")

        node.process.send_signal(signal.SIGTERM)
        code = node.wait()
        assert code == 143, node.text
        assert "tilewise: terminated (SIGTERM); finishing the file being written" in node.text
        assert "Traceback" not in node.text and "Warning" not in node.text
        assert [e["series"] for e in journal(spool, "segmented")] == [uid] and len(segs_in_orthanc(pacs)[uid]) == 1
        assert [e["reason"] for e in journal(spool, "refused")] == ["uids"] * 3 + ["disk"] * IS_ROOT
        assert sorted(p.name for p in spool.iterdir()) == [".tilewise-claims", "incoming", "journal.jsonl",
                                                           "series", "tmp"]
        assert sorted(p.name for p in (spool / "series").iterdir()) == [uid]  # nothing escaped, no SEG spooled
        assert os.listdir(spool / "tmp") == [] and sorted(p.name for p in disk.iterdir()) == ["spool"]


def test_readme_command_parses() -> None:
    """The README's 'DICOM node' command, its placeholders filled in, is what ``tilewise listen`` takes."""
    import re
    import shlex

    from tilewise.engine.commands.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### DICOM node\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    [block] = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    [command] = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    words = shlex.split(command.replace("MODEL_DIR", "demo"))
    assert words[:2] == ["tilewise", "listen"]
    args = build_parser().parse_args(words[1:])
    assert (args.aet, args.port, args.model, args.send) == ("TILEWISE", 11112, "demo", "ORTHANC@PACS:4242")

"""The DICOM node's round trip, timed: ``python tests/bench_listen_round_trip.py [--preset preview reference]
[--settle 2]``.

Starts a real Orthanc (:mod:`orthanc_fixture`, its DICOM service on, knowing AE title TILEWISE at a loopback port)
and stores the demo sample in it as an MR series (194 files). Per preset, starts ``tilewise listen --aet TILEWISE
--port <that port> -m demo --preset P --send ORTHANC@127.0.0.1:<Orthanc's port> --settle S`` and waits until its
model is loaded (a node is started once and runs for days), then has Orthanc push the series to the node
(``POST /modalities/tilewise/store``, synchronous: it returns after the last C-STORE and the association's release)
and polls Orthanc until the SEG that references the series is there.

Prints one JSON line per preset: the push's seconds, the seconds from the last C-STORE to the SEG being in Orthanc,
and the node's own steps from its journal (settle and seal, segmentation with its stages, the SEG's C-STORE), with
the load average. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pacs_round_trip import write_mr_series
from orthanc_fixture import PACS_AET, TILEWISE_AET, orthanc_server


def seconds_between(journal: list[dict], first: str, last: str) -> float:
    """Seconds between the journal's first ``first`` and ``last`` events."""
    stamps = {entry["event"]: entry["epoch"] for entry in reversed(journal)}
    return round(stamps[last] - stamps[first], 2)


def round_trip(orthanc, series_id: str, series_uid: str, preset: str, settle: float, root: Path,
               extra: list[str]) -> dict:
    """One node with ``preset``: the push, the wait for the SEG, and the node's journal."""
    spool = root / f"spool_{preset}"
    command = [str(Path(sys.executable).parent / "tilewise"), "listen", "--aet", TILEWISE_AET, "--port",
               str(orthanc.move_port), "--bind", "127.0.0.1", "-m", "demo", "--preset", preset, "--send",
               f"{PACS_AET}@127.0.0.1:{orthanc.dicom_port}", "--spool", str(spool), "--settle", str(settle), *extra]
    node = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        for line in node.stderr:  # type: ignore[union-attr]
            if "model loaded" in line:
                break
        else:
            raise SystemExit(f"the node stopped: {node.wait()}")
        load = os.getloadavg()
        with orthanc.session() as session:
            started = time.perf_counter()
            answer = session.post(f"{orthanc.http_url}/modalities/tilewise/store",
                                  json={"Resources": [series_id], "Synchronous": True}, timeout=600)
            answer.raise_for_status()
            pushed = time.perf_counter()
            while True:
                found = session.post(f"{orthanc.http_url}/tools/find", timeout=30, json={
                    "Level": "Series", "Query": {"Modality": "SEG"}, "Expand": True}).json()
                if found:
                    break
                time.sleep(0.05)
            arrived = time.perf_counter()
            for item in found:
                session.delete(f"{orthanc.http_url}/series/{item['ID']}", timeout=30)  # for the next preset
    finally:
        node.terminate()
        node.wait(timeout=120)
    journal = [json.loads(line) for line in (spool / "journal.jsonl").read_text().splitlines()]
    state = json.loads(next((spool / "series" / series_uid).glob("v1/state.json")).read_text())
    return {"preset": preset, "settle_s": settle, "push_s": round(pushed - started, 2),
            "last_c_store_to_seg_in_orthanc_s": round(arrived - pushed, 2),
            "segmentation_s": state.get("seconds"), "stages_s": state.get("timings"),
            "seg_c_store_s": next(e["seconds"] for e in journal if e["event"] == "sent"),
            "received_to_sealed_s": seconds_between(journal, "received", "sealed"),
            "load_average": [round(value, 1) for value in load], "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["preview", "reference"])
    parser.add_argument("--settle", type=float, default=2.0, help="the node's --settle (its default is 10)")
    parser.add_argument("--extra", nargs="*", default=[], help="more tilewise listen flags, e.g. --backend torch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tilewise-bench-listen-") as scratch:
        root = Path(scratch)
        _, series_uid = write_mr_series(root / "sample")
        with orthanc_server(root / "orthanc", dicom=True) as orthanc:
            orthanc.upload(sorted((root / "sample").iterdir()))
            with orthanc.session() as session:
                [series_id] = session.post(f"{orthanc.http_url}/tools/find", timeout=30, json={
                    "Level": "Series", "Query": {"SeriesInstanceUID": series_uid}}).json()
            for preset in args.preset:
                print(json.dumps(round_trip(orthanc, series_id, series_uid, preset, args.settle, root, args.extra)),
                      flush=True)


if __name__ == "__main__":
    main()

"""The PACS round trip, timed end to end: ``python tests/bench_pacs_round_trip.py [--preset preview reference]``.

Starts a real Orthanc (:mod:`orthanc_fixture`: Debian's ``orthanc`` and ``orthanc-dicomweb``, loopback, basic
authentication), stores the demo sample in it as an MR series (194 slices of 187 x 219, one file per slice), then
per preset runs, as separate processes (start-up and model load included, as a user would):

- ``tilewise predict -i <the series' DICOMweb address> -o OUT -m demo --preset P --send <the server>``: pull,
  segment, write the DICOM SEG, store it back;
- the same by DIMSE: ``-i dicom://ORTHANC@127.0.0.1:PORT/studies/...`` (C-GET) ``--send dicom://...`` (C-STORE);
- the same on the series' local folder with ``--output-type dicom-seg`` and no ``--send``: what the PACS adds.

Prints one JSON line per run (wall seconds, the pull and store lines Tilewise printed). Not part of the test suite.
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

import pydicom
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import SAMPLE, write_ct_series
from orthanc_fixture import PASSWORD, USER, orthanc_server


def write_mr_series(folder: Path) -> tuple[str, str]:
    """The demo sample as an MR series in ``folder``; (study, series) UIDs."""
    write_ct_series(sitk.ReadImage(str(SAMPLE)), folder)
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        dataset.Modality = "MR"
        dataset.save_as(path)
    first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``command``; its wall seconds and stderr (raises when it fails)."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["preview", "reference"])
    parser.add_argument("--extra", nargs="*", default=[], help="more tilewise predict flags, e.g. --backend torch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tilewise-bench-pacs-") as scratch:
        root = Path(scratch)
        study, series = write_mr_series(root / "sample")
        netrc = root / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
        netrc.chmod(0o600)
        env = dict(os.environ, TILEWISE_NETRC=str(netrc))
        tilewise = str(Path(sys.executable).parent / "tilewise")
        with orthanc_server(root / "orthanc", dicom=True) as orthanc:
            started = time.perf_counter()
            orthanc.upload(sorted((root / "sample").iterdir()))
            print(json.dumps({"step": "upload", "files": 194, "seconds": round(time.perf_counter() - started, 2)}))
            address = f"{orthanc.dicomweb}/studies/{study}/series/{series}"
            for preset in args.preset:
                common = ["-m", "demo", "--preset", preset, *args.extra]
                seconds, err = timed([tilewise, "predict", "-i", address, "-o", str(root / f"pacs_{preset}"),
                                      *common, "--send", orthanc.dicomweb], env)
                lines = [line for line in err.splitlines() if "pulled" in line or "stored" in line]
                print(json.dumps({"step": "round trip", "preset": preset, "seconds": round(seconds, 2),
                                  "lines": lines}))
                dimse = f"{orthanc.dicom}/studies/{study}/series/{series}"
                seconds, err = timed([tilewise, "predict", "-i", dimse, "-o", str(root / f"dimse_{preset}"),
                                      *common, "--send", orthanc.dicom], env)
                lines = [line for line in err.splitlines() if "pulled" in line or "stored" in line]
                print(json.dumps({"step": "round trip by DIMSE", "preset": preset, "seconds": round(seconds, 2),
                                  "lines": lines}))
                seconds, _ = timed([tilewise, "predict", "-i", str(root / "sample"), "-o",
                                    str(root / f"local_{preset}"), *common, "--output-type", "dicom-seg"], env)
                print(json.dumps({"step": "local folder to DICOM SEG", "preset": preset,
                                  "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()

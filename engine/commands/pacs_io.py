"""``tilewise predict`` and ``batch`` from and to a PACS: ``-i`` a DICOMweb or DIMSE address (or, for batch, a
study list of them) and ``--send`` a DICOMweb server or DIMSE service.

Before the pre-flight, the cases the address names are pulled (WADO-RS, C-GET or C-MOVE) into a private temporary
folder (mode 700) and ``-i`` points there; the run is then that of a DICOM folder (every check, the same outputs,
named by UID: ``<SeriesInstanceUID>_seg.dcm``). After the run, every DICOM SEG or RTSTRUCT output of the job is
stored on the ``--send`` server (STOW-RS or C-STORE). The temporary folder, the patient's images, is removed
whatever happens (also on Ctrl-C and SIGTERM). Lines name series and objects by UID, never by the patient's name.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..batch.cases import collect_batch_cases, shard
from ..data.cases import collect_cases
from ..data.outputs import DICOM_OUTPUTS, is_dicom_output, with_output_type
from ..errors import InputError
from ..model.bundle import dataset_channel_count
from ..pacs import PacsServer, RemoteCase, connect_address, is_pacs_address, pull, remote_cases

LIST_SUFFIXES = (".txt", ".list")


def add_pacs_options(parser: argparse.ArgumentParser) -> None:
    """``--send``, shared by ``predict`` and ``batch``."""
    parser.add_argument(
        "--send", metavar="ADDRESS", default=None,
        help="store each DICOM SEG or RTSTRUCT written on this PACS (--output-type defaults to dicom-seg): a DICOMweb "
             "server, dicomweb+http(s)://HOST:PORT/ROOT (STOW-RS; credentials from ~/.netrc, TILEWISE_NETRC or "
             "TILEWISE_PACS_USER/TILEWISE_PACS_PASSWORD), or a DICOM service, dicom://AET@HOST:PORT (C-STORE, as "
             "TILEWISE_AE_TITLE, default TILEWISE)")


def is_study_list(text: object) -> bool:
    """True for a text file (.txt, .list) of PACS addresses, one per line ('#' starts a comment)."""
    path = Path(str(text))
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def uses_pacs(args: argparse.Namespace) -> bool:
    """True when the command reads from or sends to a PACS."""
    return bool(getattr(args, "send", None)) or is_pacs_address(args.input) or \
        (args.command == "batch" and is_study_list(args.input))


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"tilewise: {text}", file=sys.stderr)


def _warn(text: str) -> None:
    print(f"tilewise: warning: {text}", file=sys.stderr)


def _list_addresses(path: Path) -> list[str]:
    """The PACS addresses of a study list; raises :class:`InputError` naming the line of anything else."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise InputError(path, f"cannot be read as a study list ({reason})") from None
    addresses = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not is_pacs_address(text):
            raise InputError(path, f"line {number} is not a PACS address (dicomweb+http(s)://... or dicom://...)")
        addresses.append(text)
    if not addresses:
        raise InputError(path, "lists no PACS address")
    return addresses


def _remote_cases(args: argparse.Namespace) -> list[RemoteCase]:
    """The cases ``-i`` names on its server(s), checked against what the command can run."""
    text = str(args.input)
    addresses = [text] if is_pacs_address(text) else _list_addresses(Path(text))
    cases: dict[str, RemoteCase] = {}
    for address in addresses:
        server = connect_address(address, _warn)
        for case in remote_cases(server):
            cases.setdefault(case.name, case)
    if not cases:
        raise InputError(text, "no image series matches")
    if args.command == "predict" and len(cases) > 1:
        raise InputError(text, f"names {len(cases)} series or studies; 'tilewise batch' segments several")
    return list(cases.values())


def _send_server(args: argparse.Namespace) -> PacsServer | None:
    """The ``--send`` server, after checking that the job writes DICOM objects (``same`` becomes dicom-seg)."""
    if not args.send:
        return None
    if args.output_type == "same":
        args.output_type = "dicom-seg"
    elif args.output_type not in DICOM_OUTPUTS:
        raise InputError(None, f"--send stores DICOM objects; --output-type {args.output_type} writes none (use "
                               "dicom-seg or dicom-rtstruct)")
    server = connect_address(args.send, _warn)
    if server.location.study_uid or server.location.search:
        raise InputError(args.send, "--send takes the server alone (the objects name their study): "
                                    "dicomweb+http(s)://HOST:PORT/ROOT or dicom://AET@HOST:PORT")
    return server


def _job_outputs(args: argparse.Namespace) -> list[Path]:
    """The DICOM outputs this job writes (whether written yet or not), as the run names them."""
    source, output = Path(args.input), Path(args.output)
    channels = dataset_channel_count(args.model)
    if args.command == "predict":
        cases = collect_cases(source, output, channels, args.channels)
    else:
        batch = shard(collect_batch_cases(source, output, channels), args.num_parts, args.part_id)
        cases = [item.case for item in batch if item.problem is None]
    return [case.output for case in with_output_type(cases, args.output_type) if is_dicom_output(case.output)]


def send_outputs(args: argparse.Namespace, server: PacsServer, outputs: list[Path]) -> int:
    """Store every output that exists on ``server``; returns how many were stored (raises on the first refusal)."""
    stored = 0
    for path in outputs:
        if not path.is_file():
            continue
        started = time.perf_counter()
        study, series, instance = server.store(path)
        stored += 1
        _say(args, f"stored {instance} (series {series}, study {study}) on {server.name} in "
                   f"{time.perf_counter() - started:.1f}s")
    return stored


@contextmanager
def pacs_job(args: argparse.Namespace) -> Iterator[Callable[[int], int]]:
    """Around a predict or batch run: pull a PACS ``-i`` into a private temporary folder (``args.input`` then
    names it) and remove it afterwards. Yields ``finish(exit_status) -> exit_status``, which stores the job's DICOM
    outputs on the ``--send`` server (after a run that wrote them: status 0, or 3 for a batch where some cases
    failed) and returns the status."""
    server = _send_server(args)  # a bad --send is refused before anything is pulled
    folder: Path | None = None
    try:
        if is_pacs_address(args.input) or (args.command == "batch" and is_study_list(args.input)):
            cases = _remote_cases(args)
            folder = Path(tempfile.mkdtemp(prefix="tilewise-pacs-"))  # mode 700: the patient's images
            started = time.perf_counter()
            pulled = pull(cases, folder, None if args.quiet else lambda line: _say(args, line))
            args.input = str(pulled[0] if args.command == "predict" else folder)
            _say(args, f"{len(cases)} case(s) pulled in {time.perf_counter() - started:.1f}s")

        def finish(status: int) -> int:
            if server is not None and (status == 0 or (status == 3 and args.command == "batch")):
                send_outputs(args, server, _job_outputs(args))
            return status

        yield finish
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

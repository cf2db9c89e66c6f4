"""``tilewise listen``: the DICOM node's command line (the node itself is :mod:`tilewise.engine.pacs.node`).

``tilewise listen --aet TILEWISE --port 11112 -m MODEL --send PACS_AET@HOST:PORT`` receives series by C-STORE,
segments each complete series once and stores its DICOM SEG on the ``--send`` PACS; its queue is a spool folder on
disk, so stopping, killing or restarting it loses and repeats nothing. Exit status: 143 on SIGTERM and 130 on
Ctrl-C (the file being written is finished, the rest waits in the spool); with ``--once``, 0 when every series it
handled was sent, 3 when some failed or were not sent; 2 (3: a port this user may not open) for a setting refused
before it listens.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..data.dicom.seg import DEFAULT_SEG_TYPE, SEG_TYPES
from ..data.dicom.source import require_dicom_extra
from ..errors import InputError
from ..model.suitability import InputPolicy, set_input_policy
from ..model.totalseg import task_name
from ..pacs import DimseServer, PacsServer, connect_address, is_pacs_address
from ..pacs.dimse import require_dimse
from ..pacs.node import Node, NodeSettings
from ..pacs.spool import Journal, Spool
from ..runtime.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt
from .options import add_run_options, preset_from_args

EXIT_INTERRUPTED, EXIT_SOME_UNSENT = 130, 3
DEFAULT_PORT, DEFAULT_SETTLE_S = 11112, 10.0


def add_listen_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``tilewise listen`` on the ``tilewise`` command's sub-parsers."""
    listen = commands.add_parser(
        "listen", help="a DICOM node: receive series by C-STORE, segment each complete series once, send its SEG",
        description="Receive series by C-STORE as AE title --aet on --port, segment each series once it is complete "
        "(no new instance for --settle seconds) and store its DICOM SEG on the --send PACS. The queue lives in the "
        "--spool folder: a restart resumes it, sending SEGs written but not sent and segmenting the rest, never a "
        "series twice. Exit status: 143 on SIGTERM, 130 on Ctrl-C; with --once 0 (3 when a series failed or was "
        "not sent).")
    listen.add_argument("--aet", default="TILEWISE", help="this node's AE title (default TILEWISE); associations "
                        "that call another title are rejected, and the SEGs are sent under it")
    listen.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the DICOM port to listen on (default "
                        f"{DEFAULT_PORT})")
    listen.add_argument("--bind", default="", metavar="ADDRESS", help="the network address to listen on (default: "
                        "every interface; 127.0.0.1: this computer only)")
    listen.add_argument("--send", required=True, metavar="ADDRESS", help="where each SEG is stored: "
                        "PACS_AET@HOST:PORT or dicom://PACS_AET@HOST:PORT (C-STORE), or a DICOMweb server, "
                        "dicomweb+http(s)://HOST:PORT/ROOT (STOW-RS; credentials as for predict --send)")
    listen.add_argument("--spool", type=Path, default=None, metavar="FOLDER", help="the queue on disk: instances "
                        f"received, series sealed, SEGs and their states (default: {default_spool()})")
    listen.add_argument("--settle", type=float, default=DEFAULT_SETTLE_S, metavar="SECONDS", help="a series is "
                        f"complete after this long without a new instance (default {DEFAULT_SETTLE_S:g})")
    listen.add_argument("--once", action="store_true", help="exit once a series was handled and nothing is left "
                        "to do (nothing arriving, nothing queued): for scripts and tests")
    add_run_options(listen)
    listen.add_argument("--output-type", dest="output_type", choices=("dicom-seg", "dicom-rtstruct"),
                        default="dicom-seg", help="what is sent: a DICOM SEG (default) or an RTSTRUCT")
    listen.add_argument("--seg-type", dest="seg_type", choices=SEG_TYPES, default=DEFAULT_SEG_TYPE,
                        help="binary (default: every PACS reads it) or labelmap (DICOM's 2024 Label Map SEG)")
    listen.add_argument("-q", "--quiet", action="store_true", help="no lines on stderr (the spool's journal.jsonl "
                        "still records every event)")


def default_spool() -> Path:
    """The spool in the user's data folder: ``$XDG_DATA_HOME/tilewise/listen`` (``~/.local/share/...``; Windows:
    ``%LOCALAPPDATA%``; macOS: ``~/Library/Application Support``)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "tilewise" / "listen"


def send_address(text: str) -> str:
    """``--send`` as an address: 'AET@HOST:PORT' becomes 'dicom://AET@HOST:PORT'; a PACS address stays."""
    if "://" not in text and "@" in text:
        return f"dicom://{text}"
    if not is_pacs_address(text):
        raise InputError(text, "--send takes PACS_AET@HOST:PORT, dicom://PACS_AET@HOST:PORT or "
                               "dicomweb+http(s)://HOST:PORT/ROOT")
    return text


def _send_server(args: argparse.Namespace) -> PacsServer:
    server = connect_address(send_address(args.send), lambda text: print(f"tilewise: warning: {text}",
                                                                          file=sys.stderr))
    if server.location.study_uid or server.location.search:
        raise InputError(args.send, "--send takes the server alone: PACS_AET@HOST:PORT or "
                                    "dicomweb+http(s)://HOST:PORT/ROOT")
    if isinstance(server, DimseServer):
        server.calling_aet = args.aet  # the node stores under its own AE title
    return server


def _check(args: argparse.Namespace) -> None:
    """The settings and the model, before anything listens (one line, exit 2, for each problem)."""
    if not args.aet.strip() or len(args.aet) > 16 or "\\" in args.aet:
        raise InputError("--aet", "an AE title is 1 to 16 characters, without a backslash")
    if not 0 < args.port < 65536:
        raise InputError("--port", f"must be a port number, 1 to 65535 (got {args.port})")
    if args.settle < 0:
        raise InputError("--settle", f"must be 0 seconds or more (got {args.settle:g})")
    if task_name(args.model) is not None:
        raise InputError("-m", "listen takes one nnU-Net model folder (or demo), not a TotalSegmentator task")
    require_dimse()
    require_dicom_extra(args.output_type)
    from .preflight import check_model, read_model

    check_model(args, *read_model(args))


def _named(source: str) -> str:
    """A spool path in a warning as its series ('series <UID>'), anything else as it is."""
    path = Path(source)
    return f"series {path.parent.parent.name}" if path.name == "instances" else source


def run_listen(args: argparse.Namespace) -> int:
    """Run the DICOM node until SIGTERM or Ctrl-C (or, with ``--once``, until it is idle); the exit status."""
    _check(args)
    server = _send_server(args)
    journal = Journal(Path(args.spool or default_spool()) / "journal.jsonl", args.quiet)
    spool = Spool(args.spool or default_spool(), journal)
    settings = NodeSettings(aet=args.aet.strip(), port=args.port, spool=spool.root, model=args.model,
                            preset=preset_from_args(args), bind=args.bind, settle_s=args.settle, device=args.device,
                            folds=args.folds, checkpoint=args.checkpoint, trust=args.trust_model,
                            nnunet_exact=args.nnunet_exact, seg_type=args.seg_type, output_type=args.output_type,
                            once=args.once)
    node = Node(settings, server, spool)
    previous = set_input_policy(InputPolicy(warn=lambda source, text: journal.say(f"warning: {_named(source)}: "
                                                                                      f"{text}")))
    try:
        with warnings.catch_warnings(), sigterm_as_interrupt():
            # pydicom warns (several lines each) about odd values senders put in objects; the node's own lines say
            # what matters: what was refused and why
            warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
            try:
                node.start()
                node.wait()
            except KeyboardInterrupt as stop:
                how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
                print(f"tilewise: {how}; finishing the file being written, the spool keeps the rest for the next "
                      "start", file=sys.stderr, flush=True)
                node.stop()
                return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
            node.stop()
    finally:
        set_input_policy(previous)
    if node.error is not None:
        raise node.error
    unsent = node.unsent()
    if unsent:
        journal.say(f"{unsent} series version(s) failed or were not sent; see {spool.root / 'journal.jsonl'}")
    return EXIT_SOME_UNSENT if unsent else 0

"""The DICOM node's spool: a folder on disk holding every instance received, every series version sealed for
segmentation and the state of each, so that a node killed at any moment (kill -9, a power cut) resumes where it
stopped, and several nodes can share one spool.

Layout (``SPOOL``, mode 700: it holds patients' images):

- ``incoming/<SeriesUID>/<SOPInstanceUID>.dcm``: the instances of a series still arriving. Each is written whole
  under ``tmp/``, fsynced, and renamed here before the sender hears 'stored', so a file here is whole.
- ``incoming/<SeriesUID>/.open@<host>@<pid>@<n>``: association ``n`` of process ``pid`` is storing into the series
  (removed at its release); ``.aborted``: a delivery was cut (the association aborted, the connection dropped, or
  the node died while receiving), and the series is held until a later delivery of it ends with a release.
- ``series/<SeriesUID>/v<N>/``: version N of the series, sealed (:mod:`.sealing`): ``instances/`` (what is
  segmented), ``state.json`` (:data:`STATES`) and the SEG once written.
- ``.tilewise-claims/<SeriesUID>.v<N>.claim``: the process segmenting a version (:class:`~..batch.claims.Claims`).
- ``journal.jsonl``: one JSON line per event, by UID (never a patient's name): received, held, sealed, duplicate,
  superseded, segmented, sent, send-failed, failed.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..batch.claims import HOST
from ..data.safe_output import fsync_folder, process_alive
from ..errors import output_error

QUEUED, WRITTEN, SENT, FAILED, DUPLICATE, SUPERSEDED = "queued", "written", "sent", "failed", "duplicate", "superseded"
STATES = (QUEUED, WRITTEN, SENT, FAILED, DUPLICATE, SUPERSEDED)
"""A version is queued (sealed, not segmented yet), written (its SEG is on the disk, with its size and SHA-256),
sent, failed (its reason recorded; not retried), a duplicate (the same instances as the version before it) or
superseded (a later version holds its instances and more, before it was segmented)."""
FINAL = frozenset({SENT, FAILED, DUPLICATE, SUPERSEDED})
ABORTED_MARK, OPEN_MARK = ".aborted", ".open@"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_VERSION = re.compile(r"^v(?P<number>[0-9]+)$")
STALE_AFTER_S = 24 * 3600
"""A marker or temporary file of another host this old belongs to no running node."""


def valid_uid(text: object) -> bool:
    """True for a DICOM UID (digits and dots, at most 64 characters): the only names the spool makes from data."""
    return isinstance(text, str) and 0 < len(text) <= 64 and _UID.match(text) is not None


def now_iso() -> str:
    """The time now as ISO 8601 (UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class VersionRef:
    """Version ``number`` of series ``series`` in a spool, at ``folder``."""

    series: str
    number: int
    folder: Path

    @property
    def name(self) -> str:
        """The version's name in claims and messages: '<SeriesUID>.v<N>'."""
        return f"{self.series}.v{self.number}"

    @property
    def instances(self) -> Path:
        """The folder of the instances segmented."""
        return self.folder / "instances"

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"


class Journal:
    """The spool's ``journal.jsonl`` (one JSON line per event, appended whole) and the node's lines on stderr."""

    def __init__(self, path: Path, quiet: bool = False) -> None:
        self.path = path
        self.quiet = quiet
        self._lock = threading.Lock()  # the storage service's, the scheduler's and the worker's lines, each whole

    def record(self, event: str, series: str | None, line: str | None = None, **fields: Any) -> None:
        """Append ``event`` about ``series`` with ``fields``; print ``line`` (when given) as 'tilewise: LINE'."""
        entry = {"time": now_iso(), "epoch": round(time.time(), 3), "event": event, "series": series, "pid": os.getpid(), "host": HOST, **fields}
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        except OSError as error:  # a journal that cannot be written never stops the node
            self.say(f"warning: cannot append to {self.path} ({error.strerror or error})")
        if line is not None:
            self.say(line)

    def say(self, line: str) -> None:
        """One line on stderr, 'tilewise: LINE' (nothing with ``quiet``)."""
        if not self.quiet:
            with self._lock:
                sys.stderr.write(f"tilewise: {line}\n")
                sys.stderr.flush()


def owned_name(prefix: str, suffix: str) -> str:
    """A file name that says which process made it: '<prefix>@<host>@<pid>@<suffix>'."""
    return f"{prefix}@{HOST}@{os.getpid()}@{suffix}"


def owner_gone(name: str) -> bool:
    """Whether the process that made ``name`` (see :func:`owned_name`) is gone: a process of this host that no
    longer runs. (Of another host, only the file's age tells.)"""
    parts = name.split("@")
    try:
        host, pid = parts[1], int(parts[2])
    except (IndexError, ValueError):
        return True
    return host == HOST and not process_alive(pid)


class Spool:
    """One spool folder (see the module's description). Methods that add instances or seal series are safe to
    call from several threads (one lock) and several processes (atomic renames)."""

    def __init__(self, root: Path, journal: Journal | None = None) -> None:
        self.root = Path(root)
        self.incoming, self.tmp, self.series = self.root / "incoming", self.root / "tmp", self.root / "series"
        self.lock = threading.Lock()
        for folder in (self.root, self.incoming, self.tmp, self.series):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as error:
                raise output_error(error, folder) from None
        self.journal = journal or Journal(self.root / "journal.jsonl")

    # -- instances -----------------------------------------------------------------------------------------------

    def store_instance(self, series: str, sop: str, data: bytes, marker: str) -> None:
        """Write one instance (``data``: a DICOM file's bytes) of ``series`` whole into ``incoming/``, marked as
        delivered by association ``marker`` (see :meth:`open_marker`). Raises OSError (the disk is full, ...)."""
        staged = self.tmp / owned_name("", f"{uuid.uuid4().hex}.part")
        try:
            with open(staged, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            for _ in range(5):  # the series may be sealed (moved away) by another process between two steps
                with self.lock:
                    folder = self.incoming / series
                    folder.mkdir(mode=0o700, exist_ok=True)
                    (folder / marker).touch(exist_ok=True)
                    try:
                        os.replace(staged, folder / f"{sop}.dcm")
                    except FileNotFoundError:
                        continue
                fsync_folder(folder)
                return
            raise OSError(f"the series folder of {series} kept moving")
        finally:
            staged.unlink(missing_ok=True)

    @staticmethod
    def open_marker(number: int) -> str:
        """The marker name of this process's association ``number``."""
        return owned_name(OPEN_MARK[:-1], str(number))

    def end_delivery(self, series: str, marker: str, cut: bool) -> None:
        """An association that stored into ``series`` ended: released (``cut`` False: a delivery cut earlier is
        taken as sent again) or aborted (``cut``: the series is held, see the module's description)."""
        folder = self.incoming / series
        with self.lock:
            if not folder.is_dir():
                return
            if cut:
                (folder / ABORTED_MARK).touch(exist_ok=True)
            else:
                (folder / ABORTED_MARK).unlink(missing_ok=True)
            (folder / marker).unlink(missing_ok=True)

    def arrivals(self, settle_s: float) -> tuple[list[str], int, list[str]]:
        """The incoming series: (those complete, sealable now: no instance and no delivery for ``settle_s``
        seconds; how many are still arriving; those held after a cut delivery). A marker of a dead process on this
        host becomes '.aborted' (the node died while receiving)."""
        ready, arriving, held = [], 0, []
        now = time.time()
        try:
            entries = [entry for entry in os.scandir(self.incoming) if entry.is_dir(follow_symlinks=False)]
        except OSError:
            return ready, arriving, held
        for entry in entries:
            state = self._arrival(Path(entry.path), now, settle_s)
            if state == "ready":
                ready.append(entry.name)
            elif state == "held":
                held.append(entry.name)
            elif state == "arriving":
                arriving += 1
        return sorted(ready), arriving, sorted(held)

    def _arrival(self, folder: Path, now: float, settle_s: float) -> str:
        try:
            names = os.listdir(folder)
            quiet = now - folder.stat().st_mtime
        except OSError:
            return "gone"
        if ABORTED_MARK in names:
            return "held"
        open_marks = [name for name in names if name.startswith(OPEN_MARK)]
        for name in open_marks:
            try:
                old = now - (folder / name).stat().st_mtime > STALE_AFTER_S
            except OSError:
                continue
            if owner_gone(name) or old:
                self.end_delivery(folder.name, name, cut=True)
                self.journal.record("held", folder.name, f"series {folder.name}: its delivery was cut (the node "
                                    "stopped while receiving); held until it is sent again")
                return "held"
        if open_marks or quiet < settle_s:
            return "arriving"
        if not any(name.endswith(".dcm") for name in names):
            with self.lock:  # markers alone: nothing to seal
                try:
                    for name in os.listdir(folder):
                        (folder / name).unlink(missing_ok=True)
                    folder.rmdir()
                except OSError:
                    pass
            return "gone"
        return "ready"

    def clean_tmp(self) -> None:
        """Remove temporary files of dead processes on this host (and day-old ones of other hosts)."""
        now = time.time()
        for path in self.tmp.glob("*.part"):
            try:
                if owner_gone(path.name) or now - path.stat().st_mtime > STALE_AFTER_S:
                    path.unlink(missing_ok=True)
            except OSError:
                pass

    # -- versions and their states -----------------------------------------------------------------------------

    def versions(self, series: str | None = None) -> list[VersionRef]:
        """Every sealed version (of ``series``, or of all), oldest series first, then by number."""
        found = []
        folders = [self.series / series] if series else sorted(self.series.iterdir(), key=_mtime)
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                match = _VERSION.match(entry.name)
                if match and entry.is_dir(follow_symlinks=False):
                    found.append(VersionRef(folder.name, int(match["number"]), Path(entry.path)))
        return _ordered(found)

    def read_state(self, ref: VersionRef) -> dict[str, Any]:
        """The version's recorded state (``{"state": "queued"}`` when it has none yet or it cannot be read)."""
        try:
            info = json.loads(ref.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict) or info.get("state") not in STATES:
            info = {**(info if isinstance(info, dict) else {}), "state": QUEUED}
        return info

    def write_state(self, ref: VersionRef, **fields: Any) -> dict[str, Any]:
        """Update the version's state with ``fields``, atomically (written, fsynced, renamed); returns it."""
        info = {**self.read_state(ref), **fields, "updated": now_iso()}
        write_json_atomic(ref.state_path, info)
        return info


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _ordered(found: list[VersionRef]) -> list[VersionRef]:
    """Versions in the order they were sealed: by series folder (as listed), then number."""
    order = {}
    for ref in found:
        order.setdefault(ref.series, len(order))
    return sorted(found, key=lambda ref: (order[ref.series], ref.number))


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` as JSON at ``path``: written to a temporary name beside it, fsynced, renamed, folder fsynced."""
    staged = path.with_name(owned_name(f".{path.name}", f"{uuid.uuid4().hex[:8]}.tmp"))
    try:
        with open(staged, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, path)
        fsync_folder(path.parent)
    finally:
        staged.unlink(missing_ok=True)


"""Several ``tilewise batch`` processes on one output folder share its cases: a process runs a case only after
claiming it, with a lock file made atomically (``O_CREAT | O_EXCL``) in ``OUT_DIR/.tilewise-claims/``.

A claim holds the process id, host and start time of its owner. When the case is done, the claim becomes the
case's done record (its outputs' sizes and SHA-256), which a resume re-checks; when it failed or was interrupted,
the claim is removed. A claim whose owner is gone is taken over: on this host, a process that no longer runs (or
whose id now belongs to a younger process); from another host, a claim older than :data:`STALE_AFTER_S`.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..data.safe_output import process_alive
from ..errors import output_error
from .integrity import check_outputs

CLAIMS_DIR = ".tilewise-claims"
STALE_AFTER_S = 24 * 3600
"""A running claim from another host this old is taken over (a case runs for minutes, not a day)."""
BEING_WRITTEN_S = 60.0
"""An unreadable claim younger than this is being written by its owner; older, it is a leftover."""
RUNNING, DONE = "running", "done"
HOST = socket.gethostname() or "localhost"


def owner_of(info: dict[str, Any]) -> str:
    """``host:pid`` of a claim's owner."""
    return f"{info.get('host', '?')}:{info.get('pid', '?')}"


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), on Linux; None where that cannot be told."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def is_stale(info: dict[str, Any], now: float) -> bool:
    """Whether a running claim's owner is gone (see the module's description)."""
    started = float(info.get("started_epoch", 0))
    if info.get("host") != HOST:
        return now - float(info.get("claimed_epoch", started)) > STALE_AFTER_S
    pid = int(info.get("pid", 0))
    if pid == os.getpid():
        return False
    if pid <= 0 or not process_alive(pid):
        return True
    began = _process_started(pid)
    return began is not None and began > started + 2  # the id now belongs to a process younger than the claim


class Claims:
    """This process's claims in ``output_dir`` (see the module's description)."""

    def __init__(self, output_dir: Path) -> None:
        self.folder = output_dir / CLAIMS_DIR
        self.started = time.time()
        self.held: set[str] = set()

    def path(self, name: str) -> Path:
        """The claim file of case ``name``."""
        return self.folder / f"{name}.claim"

    def read(self, name: str) -> dict[str, Any] | None:
        """The claim of case ``name`` (None when there is none); ``{}`` when it is unreadable."""
        try:
            text = self.path(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            info = json.loads(text)
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def done_files(self, name: str) -> dict[str, Any] | None:
        """The recorded outputs (sizes, checksums) of a case whose claim says it is done."""
        info = self.read(name)
        return info.get("files") if info and info.get("state") == DONE else None

    def claim(self, name: str, outputs: list[Path]) -> dict[str, Any] | None:
        """Claim case ``name``: None when this process holds it now, else the claim of the process that runs it, or
        that finished it while this run went on (its done claim is newer than this run and ``outputs`` check whole).

        Raises the engine's one-line error when the claim cannot be written (a full disk, a read-only folder).
        """
        path = self.path(name)
        for _ in range(5):
            if self._create(path):
                self.held.add(name)
                return None
            info = self.read(name)
            if info is None:
                continue  # released meanwhile: try again
            if not self._can_take(path, info, outputs):
                return info
            self._take_over(path, info)
        return self.read(name) or {}

    def _can_take(self, path: Path, info: dict[str, Any], outputs: list[Path]) -> bool:
        now = time.time()
        if not info:
            try:
                return now - path.stat().st_mtime > BEING_WRITTEN_S
            except OSError:
                return False
        if info.get("state") == DONE:
            done_meanwhile = float(info.get("finished_epoch", 0)) >= self.started
            return not (done_meanwhile and check_outputs(outputs, info.get("files")) is None)
        return is_stale(info, now)

    def _create(self, path: Path) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise output_error(error, path) from None
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(self._mine(RUNNING), handle)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            path.unlink(missing_ok=True)
            raise output_error(error, path) from None
        return True

    def _take_over(self, path: Path, seen: dict[str, Any]) -> None:
        """Move the stale claim ``seen`` aside (one process wins the rename); put back one that changed meanwhile."""
        aside = path.with_name(f"{path.name}.{HOST}.{os.getpid()}.stale")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            moved = {}
        if seen and moved != seen:  # another process claimed it between our read and our rename: give it back
            try:
                os.link(aside, path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def finish(self, name: str, files: dict[str, Any]) -> None:
        """Case ``name`` is done: its claim becomes the record of its outputs. A claim that cannot be written
        (a full disk) is removed: the case is then redone by a resume, never trusted."""
        if name not in self.held:
            return
        path = self.path(name)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(staging, "w", encoding="utf-8") as handle:
                json.dump({**self._mine(DONE), "finished_epoch": time.time(), "files": files}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, path)
        except OSError:
            path.unlink(missing_ok=True)
        finally:
            staging.unlink(missing_ok=True)  # also when a signal stopped the write: the held claim is released later
        self.held.discard(name)

    def release(self, name: str) -> None:
        """Give up the claim of case ``name`` (it failed or was interrupted): another process may run it."""
        if name in self.held:
            self.path(name).unlink(missing_ok=True)
            self.held.discard(name)

    def clear_stale(self, name: str) -> bool:
        """Remove the claim of case ``name`` when its owner is gone (see :func:`is_stale`): for a case already
        finished, whose owner was killed after finishing it and before giving the claim up. Returns whether one was
        removed; a live owner's claim and a done record stay."""
        info = self.read(name)
        if not info or info.get("state") != RUNNING or not is_stale(info, time.time()):
            return False
        self._take_over(self.path(name), info)
        return not self.path(name).exists()

    def release_all(self) -> None:
        """Give up every claim still held (the run ends)."""
        for name in list(self.held):
            self.release(name)

    def _mine(self, state: str) -> dict[str, Any]:
        now = time.time()
        return {"state": state, "pid": os.getpid(), "host": HOST, "started_epoch": self.started,
                "claimed_epoch": now, "claimed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}

"""Outputs that never destroy a user's data: never onto an input file, never half-written, no stale leftovers.

What "written" means (:func:`atomic_output`): the writer writes into a staging folder next to the destination and
checks what it wrote (:mod:`.write_checks`: every byte, by size and by re-reading the header or the stream); the file
is then fsynced, moved onto its final name in one step, and the folder fsynced, so that after a crash, a full disk
or a kill the final name holds the whole file or nothing. Every failure on the way is one
:class:`~tilewise.engine.errors.TilewiseError` naming the final path (:func:`~tilewise.engine.errors.output_error`
maps the operating system's errors).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError, OutputPathError, TilewiseError, WriteError, output_error

# Staging folders are named '.<file>.tilewise-tmp.<pid>@<host>.<random>' so that a later run can tell a killed
# run's leftovers (dead process on this host) from a write still going on in another process.
_STAGING_MARK = ".tilewise-tmp."
_STAGING_NAME = re.compile(r"\.tilewise-tmp\.(?P<pid>\d+)@(?P<host>.+)\.[^.]+$")
# A write lasts seconds to minutes; a staging folder this old is a leftover whichever machine made it (shared storage).
STALE_AFTER_S = 24 * 3600
_HOST = socket.gethostname().replace("/", "_") or "localhost"
_cleaned_folders: set[str] = set()
_cleaned_lock = threading.Lock()


def _identity(path: Path) -> str:
    """A path with symlinks resolved and case folded where the file system folds it (Windows)."""
    return os.path.normcase(os.path.realpath(path))


def _metaimage_data_file(header: Path) -> Path | None:
    """The data file a MetaImage header (.mhd) names in ``ElementDataFile``, when it is a single local file."""
    try:
        with open(header, encoding="latin-1") as handle:
            for line in handle:
                key, _, value = line.partition("=")
                if key.strip() == "ElementDataFile":
                    value = value.strip()
                    if value and value != "LOCAL" and not value.startswith(("LIST", "%")):
                        return header.parent / value
                    return None
    except OSError:
        return None
    return None


def input_files(inputs: Iterable[Path]) -> list[Path]:
    """Every file an input names: the file itself, a MetaImage header's data file, the files of a (DICOM) folder."""
    files: list[Path] = []
    for source in inputs:
        source = Path(source)
        if source.is_dir():
            files.extend(p for p in source.rglob("*") if p.is_file())
            continue
        files.append(source)
        if source.name.lower().endswith(".mhd") and (data := _metaimage_data_file(source)) is not None:
            files.append(data)
    return files


def refuse_overwriting_inputs(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """Raise :class:`InputError` naming the output when any output path is one of the input files.

    Paths are compared after resolving symlinks (and case on Windows); an output that already exists is also
    compared by device and inode, which catches hard links and case-insensitive file systems.
    """
    protected = input_files(inputs)
    by_path = {_identity(p): p for p in protected}
    by_inode: dict[tuple[int, int], Path] = {}
    for path in protected:
        try:
            status = path.stat()
        except OSError:
            continue
        by_inode[(status.st_dev, status.st_ino)] = path
    for output in outputs:
        output = Path(output)
        hit = by_path.get(_identity(output))
        if hit is None and output.exists():
            status = output.stat()
            hit = by_inode.get((status.st_dev, status.st_ino))
        if hit is not None:
            raise InputError(output, f"this output would overwrite the input {hit}; choose another output folder "
                                     "or name")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a conservative True when that cannot be told)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        import ctypes

        synchronize, still_active = 0x100000, 259
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(synchronize | 0x1000, False, pid)  # 0x1000: PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists but belongs to someone else
        try:
            code = ctypes.c_ulong()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == still_active
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def clean_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders that killed runs left in ``folder``; returns what was removed.

    A staging folder is stale when the process that made it, on this machine, is gone, or when it is older than
    :data:`STALE_AFTER_S` (made on another machine sharing the folder).
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _STAGING_NAME.search(entry.name)
        if not entry.name.startswith(".") or match is None or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        dead_here = match["host"] == _HOST and not process_alive(int(match["pid"]))
        if dead_here or age > STALE_AFTER_S:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _clean_once(folder: Path) -> None:
    key = _identity(folder)
    with _cleaned_lock:
        if key in _cleaned_folders:
            return
        _cleaned_folders.add(key)
    clean_stale_staging(folder)


class IncompleteFile(Exception):
    """Raised by a writer's check when the staged file is not whole; :func:`atomic_output` turns it into the
    one-line error (no space, no permission, or 'not written whole')."""


# How much :func:`_probe_error` appends to a file that came out short, to learn the operating system's reason (the
# native writers that made it report none): one page is enough to hit a full disk or a quota.
_PROBE_BYTES = 64 * 1024


def _probe_error(staged: Path, final: Path, detail: str) -> TilewiseError:
    """Why ``staged`` came out incomplete, as the error for ``final``: the operating system's answer to writing a
    little more (no space, quota, read-only, an input/output error), else a plain 'not written whole'."""
    try:
        with open(staged, "ab") as handle:
            handle.write(bytes(_PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return output_error(error, final)
    return WriteError(None, f"cannot write {final}: the file came out incomplete ({detail}); nothing was saved")


def _check_destination(path: Path) -> None:
    """Raise :class:`OutputPathError` (exit 2) when ``path`` cannot name a file: an existing folder, or a folder on
    its way that is a file; create the missing folders otherwise."""
    if path.is_dir():
        raise OutputPathError(path, "this output name is an existing folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(error, path) from error


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk ('r+b': Windows syncs only handles open for writing)."""
    with open(path, "r+b") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to the disk; Windows has no folder handles to sync."""
    if sys.platform == "win32":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes_checked(staged: Path, data: bytes) -> None:
    """Write ``data`` at ``staged`` and check that the file holds exactly those bytes (read back: the files this is
    for, JSON summaries and nnU-Net's .pkl, are small, so a read costs microseconds)."""
    with open(staged, "wb") as handle:
        handle.write(data)
    if staged.read_bytes() != data:
        raise IncompleteFile(f"{staged.stat().st_size} of {len(data)} bytes on the disk")


def _publish(staging: Path, path: Path) -> None:
    """Fsync every staged file, move them onto their final names (a MetaImage header last), fsync the folder."""
    produced = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
    if not any(p.name == path.name for p in produced):
        raise IncompleteFile("the writer left no file")
    for staged in produced:
        fsync_file(staged)
    fsync_folder(staging)
    for staged in produced:
        os.replace(staged, path.parent / staged.name)
    fsync_folder(path.parent)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder for the writer; on success move it onto ``path`` in one step.

    The writer writes there and checks what it wrote, raising :class:`IncompleteFile` when it is not whole; the
    file is then fsynced, renamed and its folder fsynced. Nothing is left behind when the body raises (or is
    interrupted), and an operating-system error or an incomplete file becomes one
    :class:`~tilewise.engine.errors.TilewiseError` naming ``path`` (exit 3 for space or permissions, 2 for a path
    that cannot be a file). The first write into a folder in a process removes what killed runs left there. A
    MetaImage header (.mhd) and its data file travel together, the header moved last.
    """
    path = Path(path)
    _check_destination(path)
    _clean_once(path.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}{_STAGING_MARK}{os.getpid()}@{_HOST}.",
                                        dir=path.parent))
    except OSError as error:
        raise output_error(error, path) from error
    try:
        yield staging / path.name
        _publish(staging, path)
    except IncompleteFile as incomplete:
        raise _probe_error(staging / path.name, path, str(incomplete)) from incomplete
    except OSError as error:
        raise output_error(error, path) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)

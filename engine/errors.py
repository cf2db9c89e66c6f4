"""Errors the engine raises, each carrying a one-line message that names the file and the problem."""
from __future__ import annotations

import errno
import os
from pathlib import Path


class TilewiseError(Exception):
    """Base class of every expected failure; the CLI prints its message and exits with ``exit_code``."""

    exit_code = 2

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)

    def __reduce__(self) -> tuple[type, tuple[str | None, str]]:
        """Pickle as (source, problem): Ray, multiprocessing and concurrent.futures hand errors between processes,
        and Exception's default pickling would call ``__init__`` with the message alone."""
        return type(self), (self.source, self.problem)


class InputError(TilewiseError):
    """An input image is missing, unreadable or does not fit the model."""


class ModelError(TilewiseError):
    """A model folder is incomplete, inconsistent or unsupported."""


class UntrustedCheckpointError(ModelError):
    """A checkpoint needs full unpickling, which may run arbitrary code."""


class OutOfMemoryError(TilewiseError):
    """The device and the host fallback both ran out of memory."""

    exit_code = 3


class DiskSpaceError(TilewiseError):
    """An output or temporary file cannot fit the free disk space."""

    exit_code = 3


class WriteAccessError(TilewiseError):
    """An output folder is read-only, or the user may not write in it."""

    exit_code = 3


class OutputPathError(InputError):
    """An output path cannot name a file: it is an existing folder, or a folder on its way is a file."""


class WriteError(TilewiseError):
    """An output could not be written whole for another reason (an input/output error, a failing disk)."""

    exit_code = 3


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NO_ACCESS = (errno.EACCES, errno.EPERM)
_NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST)  # EEXIST: creating the output's folder where a file has its name
_IN_USE = (32, 33)  # Windows' sharing and lock violations: another program holds the file (errno says EACCES)


def output_error(error: OSError, path: Path) -> TilewiseError:
    """The :class:`TilewiseError` that says, in one plain line, why writing output ``path`` failed with ``error``.

    The one place that maps operating-system errors of a write: no space or quota -> :class:`DiskSpaceError` (exit
    3); read-only, no permission or (Windows) the file open elsewhere -> :class:`WriteAccessError` (exit 3); a path
    that is a folder, or whose folder is a file, or a name too long -> :class:`OutputPathError` (exit 2); anything
    else -> :class:`WriteError` (exit 3).
    """
    path = Path(path)
    folder = path.parent
    code = error.errno
    if code in _NO_SPACE:
        what = "your disk quota is used up" if code != errno.ENOSPC else "the disk is full"
        return DiskSpaceError(None, f"cannot write {path.name} to {folder}: {what}; free some space or choose "
                                    "another folder")
    if getattr(error, "winerror", None) in _IN_USE:
        return WriteAccessError(None, f"cannot write {path}: the file is open in another program; close it there "
                                      "and try again")
    if code == errno.EROFS:
        return WriteAccessError(None, f"cannot write to {folder}: the folder is read-only")
    if code in _NO_ACCESS:
        return WriteAccessError(None, f"cannot write to {folder}: you do not have permission to write in this "
                                      "folder")
    if code == errno.EISDIR:
        return OutputPathError(path, "this output name is an existing folder; give a file name")
    if code in _NOT_A_FOLDER:
        return OutputPathError(path, f"{_file_on_the_way(folder)} is a file, not a folder")
    if code == errno.ENAMETOOLONG:
        return OutputPathError(path, "the file name or path is too long; choose a shorter one")
    reason = (error.strerror or os.strerror(code)) if code else str(error)
    return WriteError(None, f"cannot write {path}: {reason}")


def _file_on_the_way(folder: Path) -> Path:
    """The first existing non-folder among ``folder`` and the folders above it (``folder`` when there is none)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder


class Cancelled(Exception):
    """Raised when a run is cancelled through its :class:`~tilewise.engine.CancelToken`."""

"""Errors the engine raises, each carrying a one-line message that names the file and the problem."""
from __future__ import annotations

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


class Cancelled(Exception):
    """Raised when a run is cancelled through its :class:`~tilewise.engine.CancelToken`."""

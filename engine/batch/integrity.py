"""What a batch records of each output it wrote (size and SHA-256) and how a resume checks that the file is still
that file: a missing, truncated or changed output is redone, never skipped."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, read 1 MiB at a time (memory stays flat whatever its size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprints(paths: Iterable[Path]) -> dict[str, dict[str, int | str]]:
    """``{file name: {"size": bytes, "sha256": hex}}`` of files just written."""
    return {path.name: {"size": path.stat().st_size, "sha256": sha256_of(path)} for path in paths}


def check_outputs(paths: Iterable[Path], recorded: Mapping[str, Mapping] | None) -> str | None:
    """Why the outputs at ``paths`` are not the ones ``recorded`` (None when every one is whole and unchanged).

    ``recorded`` is :func:`fingerprints`' result from the run that wrote them; without it nothing can be trusted.
    The size is compared first (no reading), then the checksum.
    """
    if not recorded:
        return "no record of its outputs' sizes and checksums"
    for path in paths:
        expected = recorded.get(path.name)
        if expected is None:
            return f"{path.name} has no recorded size and checksum"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path.name} is missing"
        if size != expected.get("size"):
            return f"{path.name} has {size} bytes, {expected.get('size')} were written"
        try:
            if sha256_of(path) != expected.get("sha256"):
                return f"{path.name} has changed since it was written (checksum differs)"
        except OSError as error:
            return f"{path.name} cannot be read ({error.strerror or error})"
    return None

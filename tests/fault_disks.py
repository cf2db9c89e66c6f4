"""Real faults for the write tests: a small tmpfs (a full disk), a read-only mount, and, where the suite does not
run as root (CI does), ENOSPC injected at the writer's operating-system calls instead."""
from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import SimpleITK as sitk
from tilewise.engine.data import safe_output, slab_file, write_checks

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NEEDS_ROOT = "mounting a tmpfs (a real full disk or read-only folder) needs root; CI runs the suite as root"
needs_root = pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
STAGING_MARK = ".tilewise-tmp."
ERROR_PREFIX = "tilewise: error: "
EXPECTED_NOTES = ("tilewise: note:", "tilewise: warning:")


@contextmanager
def small_tmpfs(folder: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``folder`` (read-only when asked) for the block; root only."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount_read_only(folder: Path) -> None:
    """Make the tmpfs mounted on ``folder`` read-only (what a disk with errors does: ext4's errors=remount-ro)."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def fill(folder: Path, leave: int = 16 * 1024) -> None:
    """Fill ``folder``'s disk with one file until ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler.bin", "wb") as handle:
        handle.write(bytes(max(free - leave, 0)))


def inject_full_disk(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Without root: make writes into ``folder`` behave as on a full disk. ITK's writers write part of the file
    and return (as ITK does: 'NWAD: wrote only N of M bytes'); Tilewise's own opens for writing there raise ENOSPC."""
    real_write = sitk.WriteImage
    real_open = builtins.open

    def short_write(image: sitk.Image, name: str, *args: object) -> None:
        real_write(image, name, *args)
        if Path(name).resolve().is_relative_to(folder.resolve()):
            os.truncate(name, os.path.getsize(name) // 2)

    def full_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if ("w" in mode or "a" in mode) and Path(str(file)).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    monkeypatch.setattr(safe_output, "open", full_open, raising=False)
    monkeypatch.setattr(write_checks, "open", full_open, raising=False)
    monkeypatch.setattr(slab_file, "open", full_open, raising=False)


def error_lines(err: str) -> list[str]:
    """stderr's lines other than expected notes and warnings."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith(EXPECTED_NOTES)]


def assert_one_line(err: str, *words: str) -> str:
    """Exactly one error line (besides notes), no traceback or native noise, holding every one of ``words``."""
    assert "Traceback" not in err and "NWAD" not in err and "MetaImage:" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Staging folders (or files) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if STAGING_MARK in p.name)


def assert_not_written(folder: Path, *names: str) -> None:
    """No file under any of the final ``names`` in ``folder``, and no staging leftover of this process."""
    for name in names:
        assert not (folder / name).exists(), f"{name} is under its final name although the write failed"
    assert leftovers(folder) == [], "the staging folder of a failed write must be removed"

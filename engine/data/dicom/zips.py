"""Unpacking a zip of a DICOM folder safely: no entry outside the target folder, a bound on the unpacked size
against zip bombs, and a check of the free disk space before anything is written."""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ...errors import DiskSpaceError, InputError

MAX_UNPACKED_BYTES = 64 * 2**30
"""The most a zip may unpack to (64 GiB: several whole-body CT studies)."""
MAX_RATIO = 200
"""The most a zip may unpack to per byte of archive: DICOM compresses a few times (up to ~20x for CT with much air);
zip bombs compress a thousand times and more."""
MAX_ENTRIES = 200_000


def is_zip(path: Path) -> bool:
    """True for an existing file named ``*.zip`` (whether it is a valid archive is checked when it is unpacked)."""
    return path.is_file() and path.name.lower().endswith(".zip")


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """The path components of entry ``name``, or None when it would land outside the target folder (absolute,
    a drive letter, or a '..' component; backslashes count as separators, as Windows tools write them)."""
    path = PurePosixPath(name.replace("\\", "/"))
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if path.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        return None
    return parts


def unpack(archive: Path) -> Path:
    """Unpack ``archive`` into a new temporary folder and return it; the caller removes it (``shutil.rmtree``).

    Raises :class:`InputError` for a corrupt or encrypted archive, an entry that points outside the folder
    ('../x', '/etc/x'), or one that would unpack beyond :data:`MAX_UNPACKED_BYTES` or :data:`MAX_RATIO` times its
    size; :class:`DiskSpaceError` when the temporary folder's disk cannot hold it. Nothing is left behind on error.
    """
    try:
        with zipfile.ZipFile(archive) as opened:
            entries = [info for info in opened.infolist() if not info.is_dir()]
            _check_entries(archive, entries)
            folder = Path(tempfile.mkdtemp(prefix="tilewise-unzip-"))
            try:
                _check_free_space(archive, folder, sum(info.file_size for info in entries))
                for info in entries:
                    target = folder.joinpath(*_safe_parts(info.filename) or ())
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # zipfile stops every entry at its declared size, so the bound checked above holds while writing
                    with opened.open(info) as source, open(target, "xb") as sink:
                        shutil.copyfileobj(source, sink, 2**20)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise InputError(archive, f"not a readable zip archive ({error})") from None
    except (FileExistsError, NotADirectoryError):  # the same name twice, or a name used for a file and a folder
        raise InputError(archive, "holds conflicting file names (the same path twice)") from None
    except RuntimeError as error:  # zipfile's answer to encrypted entries
        raise InputError(archive, f"cannot unpack ({error}); give an unencrypted zip") from None
    return folder


def readable_size(count: int) -> str:
    """A byte count in the unit that shows its digits: '512 bytes', '3.4 KB', '12.0 MB', '1.50 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}" if unit == "GB" else f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def check_archive(archive: Path) -> None:
    """The checks :func:`unpack` makes before writing anything (a readable archive, no entry outside its folder, no
    zip bomb), without unpacking: for a pre-flight."""
    try:
        with zipfile.ZipFile(archive) as opened:
            _check_entries(archive, [info for info in opened.infolist() if not info.is_dir()])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise InputError(archive, f"not a readable zip archive ({error})") from None


def _check_entries(archive: Path, entries: list[zipfile.ZipInfo]) -> None:
    if len(entries) > MAX_ENTRIES:
        raise InputError(archive, f"holds {len(entries)} files, more than the {MAX_ENTRIES} a DICOM zip may hold")
    for info in entries:
        if _safe_parts(info.filename) is None:
            raise InputError(archive, f"refused: entry '{info.filename}' points outside the archive's folder")
    total = sum(info.file_size for info in entries)
    bound = min(MAX_UNPACKED_BYTES, MAX_RATIO * max(archive.stat().st_size, 1))
    if total > bound:
        raise InputError(archive, f"refused: it would unpack to {readable_size(total)}, more than "
                                  f"{readable_size(bound)} (a zip bomb?)")


def _check_free_space(archive: Path, folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskSpaceError(archive, f"needs {readable_size(needed)} to unpack but {folder.parent} has "
                                      f"{readable_size(free)} free (set TMPDIR to a larger disk)")

"""Which nnU-Net trainers build their network exactly as ``nnUNetTrainer`` does, remembered per user and machine.

nnU-Net finds a trainer class by importing every module of its trainer folder (and of ``$nnUNet_extTrainer``'s),
3-4 s per process on a CPU, torch's compiler among them, only to call the class's ``build_network_architecture``.
Most trainers inherit that method unchanged (TotalSegmentator's ``nnUNetTrainer_4000epochs_NoMirroring`` and
``nnUNetTrainerNoMirroring``, every epoch-count variant). The first time such a trainer is found, that fact is
recorded in the user's cache folder together with the size and modification time of every file its class hierarchy
comes from, keyed by the nnunetv2 version and ``$nnUNet_extTrainer``; later processes build its network with the
inherited method's own call while those files are unchanged. Anything else (a trainer with its own builder, a
changed or missing file, an unreadable record) takes nnU-Net's search.
"""
from __future__ import annotations

import inspect
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..runtime.cache_dir import user_cache_dir, write_record

RECORD_FILE = "trainer_builders.json"


def _key(name: str) -> str:
    try:
        nnunet = version("nnunetv2")
    except PackageNotFoundError:
        nnunet = "?"
    return json.dumps([nnunet, os.environ.get("nnUNet_extTrainer", ""), name])


def _file_stamps(trainer_class: type) -> list[list[Any]] | None:
    """[path, size, mtime_ns] of each file the class hierarchy is defined in; None when one has no file."""
    stamps = []
    for cls in trainer_class.__mro__[:-1]:  # every class but object
        try:
            path = Path(inspect.getfile(cls)).resolve()
            info = path.stat()
        except (TypeError, OSError):
            return None
        stamp = [str(path), info.st_size, info.st_mtime_ns]
        if stamp not in stamps:
            stamps.append(stamp)
    return stamps


def _stamps_hold(stamps: Any) -> bool:
    if not isinstance(stamps, list) or not stamps:
        return False
    for stamp in stamps:
        try:
            path, size, mtime = stamp
            info = Path(path).stat()
        except (TypeError, ValueError, OSError):
            return False
        if (info.st_size, info.st_mtime_ns) != (size, mtime):
            return False
    return True


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def builds_like_stock(name: str, cache_dir: Path | None = None) -> bool:
    """True when the record says trainer ``name`` builds its network with ``nnUNetTrainer``'s own method and the files
    its classes come from are unchanged since; False otherwise (then nnU-Net's search decides)."""
    record = _read((cache_dir or user_cache_dir()) / RECORD_FILE)
    return _stamps_hold(record.get(_key(name)))


def remember(name: str, trainer_class: type, cache_dir: Path | None = None) -> None:
    """Record ``trainer_class`` (found by nnU-Net's search for ``name``) if it inherits ``nnUNetTrainer``'s network
    builder unchanged. Best effort: a cache folder that cannot be written only means the search runs next time."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if trainer_class.build_network_architecture is not nnUNetTrainer.build_network_architecture:
        return
    stamps = _file_stamps(trainer_class)
    if stamps is None:
        return
    path = (cache_dir or user_cache_dir()) / RECORD_FILE
    record = _read(path)
    record[_key(name)] = stamps
    write_record(path, record)

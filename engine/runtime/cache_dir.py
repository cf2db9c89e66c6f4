"""Tilewise's per-user cache folder (converted models, measured rates, trainer lookups) and its small JSON records."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

CACHE_DIR_VARIABLE = "TILEWISE_CACHE_DIR"


def user_cache_dir() -> Path:
    """Tilewise's cache folder: ``$TILEWISE_CACHE_DIR``, else the platform's per-user cache location."""
    override = os.environ.get(CACHE_DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "Tilewise" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "Tilewise"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tilewise"


def write_record(path: Path, record: Any) -> None:
    """Write ``record`` as JSON to ``path`` through a staging file, so a reader in another process sees the old file
    or the new one, never half of one. Best effort: a full, read-only or missing cache folder leaves ``path`` as it
    was (the records are only shortcuts)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(json.dumps(record, indent=1), encoding="utf-8")
        staging.replace(path)
    except OSError:
        with contextlib.suppress(OSError):  # the cache path may not even be a folder
            staging.unlink(missing_ok=True)

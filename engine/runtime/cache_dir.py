"""Tilewise's per-user cache folder (converted models, measured rates, trainer lookups)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

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

"""Data shipped with Tilewise: speed presets (and, later, the demo model and the sample volume)."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def presets_path() -> Path:
    """The presets file (TOML) read by :func:`tilewise.engine.load_presets`."""
    return _HERE / "presets.toml"

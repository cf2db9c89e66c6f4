"""Tilewise's inference engine: nnU-Net v2 compatible sliding-window prediction with events and cancellation.

Plain Python + torch (+ nnunetv2); never imports Qt or napari, so it runs in batch jobs and Ray workers.
"""
from __future__ import annotations

from .runtime.quiet import silenced_stdout as _silenced_stdout

with _silenced_stdout():  # nnunetv2.paths prints hints about unset environment variables
    import nnunetv2.paths  # noqa: F401

from .errors import Cancelled, InputError, ModelError, OutOfMemoryError, TilewiseError, UntrustedCheckpointError
from .data.readers import read_volume
from .data.writers import write_labels
from .model.bundle import ModelBundle, available_folds
from .predictor import Predictor, Result, RunSettings
from .presets import Preset, get_preset, load_presets
from .events import CancelToken, TileEvent
from .sliding.plan import Tile
from .data.volume import Geometry, Volume

__all__ = [
    "Cancelled", "CancelToken", "Geometry", "InputError", "ModelBundle", "ModelError", "OutOfMemoryError",
    "Predictor", "Preset", "Result", "RunSettings", "Tile", "TileEvent", "TilewiseError", "UntrustedCheckpointError",
    "Volume", "available_folds", "get_preset", "load_presets", "read_volume", "write_labels",
]

"""Data shipped with Tilewise: speed presets, the demo nnU-Net model and the sample volume."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

DEMO_MODEL_NAME = "demo"


def presets_path() -> Path:
    """The presets file (TOML) read by :func:`tilewise.engine.load_presets`."""
    return _HERE / "presets.toml"


def demo_model_dir() -> Path:
    """The bundled nnU-Net v2 model folder (brain T1: grey matter, white matter, CSF; 5 folds)."""
    return _HERE / "demo" / "model"


def sample_path() -> Path:
    """The bundled sample T1 volume (a held-out case the demo model never saw in training)."""
    return _HERE / "demo" / "sample_t1.nii.gz"


def reference_labels_path() -> Path:
    """The demo model's labels for the sample at the ``reference`` preset (what ``tilewise --self-test`` checks)."""
    return _HERE / "demo" / "sample_t1_reference_labels.nii.gz"

"""Shared fixtures: tiny nnU-Net models built by nnU-Net's own planner, and synthetic cases."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Two cores shared by tests and nnU-Net: passive OpenMP waiting avoids spin-wait stalls (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if "TILEWISE_CACHE_DIR" not in os.environ:  # converted OpenVINO models go to a throw-away folder, not ~/.cache
    import tempfile

    os.environ["TILEWISE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tilewise-test-cache-")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import model_factory  # noqa: E402



@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder where models are built once per test session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def make_model(model_root: Path):
    """Build (or reuse) a model folder: ``make_model(kind, folds=(0,), seed=0)``."""

    def build(kind: str = "3d", folds: tuple[int, ...] = (0,), seed: int = 0, **kwargs) -> Path:
        return model_factory.make_model(model_root, kind, folds=folds, seed=seed, **kwargs)

    return build


@pytest.fixture(scope="session")
def ct_model(make_model) -> Path:
    """The standard single-channel 3d_fullres test model (one fold)."""
    return make_model("3d")


@pytest.fixture
def ct_case(tmp_path: Path) -> Path:
    """A CT-like volume written as NIfTI (single channel, identity direction)."""
    return model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d")

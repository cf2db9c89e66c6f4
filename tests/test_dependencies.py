"""The declared dependency floors cover what the engine uses (we cannot install old versions here, so the check is
that each feature the engine relies on is named next to a floor that has it, and exists in what is installed)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"torch": (2, 5), "numpy": (1, 25)}
"""Versions that introduced torch.serialization.safe_globals and torch.OutOfMemoryError, and numpy.dtypes."""


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {entry.split(">=")[0].split(";")[0].strip(): entry for entry in project["dependencies"]}


def test_floors_are_the_versions_that_have_the_features_used() -> None:
    declared = _declared()
    for name, floor in FLOORS.items():
        version = declared[name].split(">=")[1].split(",")[0].split(";")[0]
        assert tuple(int(p) for p in version.split(".")[:2]) >= floor, declared[name]
    assert "python_version < '3.11'" in declared["tomli"]


def test_the_features_exist_in_the_installed_versions() -> None:
    assert hasattr(torch.serialization, "safe_globals") and issubclass(torch.OutOfMemoryError, RuntimeError)
    assert hasattr(np, "dtypes") and hasattr(np.dtypes, "Float64DType")
    engine = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "engine").rglob("*.py"))
    assert "safe_globals" in engine and "OutOfMemoryError" in engine

"""What the command-line tests share beside conftest's ``run_cli`` fixture: the prefix of a one-line error and the
arguments of a quick ``tilewise predict``. Not a test module: test modules import from here, never from each other."""
from __future__ import annotations

from pathlib import Path

ERROR_PREFIX = "tilewise: error: "


def predict_args(source: Path, out: Path, model: Path, *extra: str | Path) -> list[str]:
    return ["predict", "-i", str(source), "-o", str(out), "-m", str(model), "--preset", "preview", "-device", "cpu",
            *[str(e) for e in extra]]

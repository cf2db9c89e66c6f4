"""Speed presets: named sets of sliding-window settings read from ``resources/presets.toml``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import TilewiseError

PRESET_ORDER: tuple[str, ...] = ("reference", "balanced", "fast", "preview")
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")


@dataclass(frozen=True)
class Preset:
    """Settings of one speed/quality trade-off.

    ``folds`` is 'all' or the number of folds to use (the first n available); ``precision`` is fp32, fp16, bf16 or
    'reduced'; ``batch_size`` 0 lets the engine choose for the device; ``backend`` is auto, torch or openvino;
    ``skip_empty_tiles`` skips tiles that lie entirely outside the body.
    """

    name: str
    label: str
    summary: str
    folds: str | int = "all"
    mirroring: bool = True
    tile_step: float = 0.5
    precision: str = "fp32"
    batch_size: int = 0
    backend: str = "auto"
    skip_empty_tiles: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.tile_step <= 1:
            raise TilewiseError(f"preset '{self.name}'", f"tile_step must be in (0, 1], got {self.tile_step}")
        if self.folds != "all" and not (isinstance(self.folds, int) and self.folds >= 1):
            raise TilewiseError(f"preset '{self.name}'", f"folds must be 'all' or a positive number, got {self.folds!r}")
        if self.backend not in BACKENDS:
            raise TilewiseError(f"preset '{self.name}'", f"backend must be one of {', '.join(BACKENDS)}, "
                                                         f"got {self.backend!r}")
        if self.batch_size < 0:
            raise TilewiseError(f"preset '{self.name}'", f"batch_size must be >= 0, got {self.batch_size}")

    def with_overrides(self, **changes: Any) -> "Preset":
        """A copy with the given fields replaced; None values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def fold_count(self) -> int | None:
        """How many of the available folds to use (None: all)."""
        return None if self.folds == "all" else int(self.folds)


def load_presets(path: Path | None = None) -> dict[str, Preset]:
    """All presets, in the order reference, balanced, fast, preview (then any others)."""
    if path is None:
        from tilewise.resources import presets_path

        path = presets_path()
    with open(path, "rb") as handle:
        table = tomllib.load(handle)
    presets = {name: Preset(name=name, **values) for name, values in table.items()}
    ordered = [n for n in PRESET_ORDER if n in presets] + [n for n in presets if n not in PRESET_ORDER]
    return {name: presets[name] for name in ordered}


def get_preset(name: str) -> Preset:
    """One preset by name (case-insensitive)."""
    presets = load_presets()
    try:
        return presets[name.lower()]
    except KeyError:
        raise TilewiseError("--preset", f"unknown preset '{name}' (choose from {', '.join(presets)})") from None

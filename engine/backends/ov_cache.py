"""On-disk cache of OpenVINO models converted from the fold networks, so only the first run pays for conversion.

An entry is a folder named after its key (network weights and structure, input shape, precision, OpenVINO
version) holding ``model.xml``, ``model.bin`` and ``manifest.json``. The manifest records the key and the sha256 of
both model files; it is written last, so an entry without one is unfinished. Loading verifies the key and the hashes
of the exact bytes it parses: a corrupt, truncated or stale entry is never trusted but rebuilt by the caller.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CACHE_DIR_VARIABLE = "TILEWISE_CACHE_DIR"
FORMAT_VERSION = 2  # bump whenever conversion changes what a cached model computes (2: pooled instance norms)
_FILES = ("model.xml", "model.bin")
_MANIFEST = "manifest.json"
NOT_CACHED = "not cached yet"
"""Why :meth:`ModelCache.load` fails for a key that was never stored."""


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


def openvino_cache_dir() -> Path:
    """Where converted OpenVINO models are kept."""
    return user_cache_dir() / "openvino"


def network_digest(network: nn.Module) -> str:
    """sha256 of a network's structure (its repr) and every weight it holds, exactly as it will be converted."""
    digest = hashlib.sha256(repr(network).encode())
    for name, tensor in network.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything a converted model depends on."""

    network: str
    """:func:`network_digest` of the fold network."""
    input_shape: tuple[int, ...]
    """(batch, channels, *patch): the static shape it is compiled for."""
    precision: str
    """fp32 models keep float32 weights; reduced-precision ones store them as float16 (half the disk)."""
    openvino: str
    """OpenVINO version that converted it."""
    format: int = FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**asdict(self), "input_shape": list(self.input_shape)}

    @property
    def id(self) -> str:
        """Folder name of the entry: a hash of all fields."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:40]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StaleEntry(Exception):
    """A cache entry that is missing, unfinished, corrupt or made for another key."""


class ModelCache:
    """Converted OpenVINO models under ``root`` (default: :func:`openvino_cache_dir`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else openvino_cache_dir()

    def entry(self, key: CacheKey) -> Path:
        """The folder of ``key``'s entry (it may not exist)."""
        return self.root / key.id

    def load(self, key: CacheKey, core: Any) -> Any:
        """The cached ``openvino.Model`` for ``key``; raises :class:`StaleEntry` saying why it cannot be trusted."""
        folder = self.entry(key)
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
        except FileNotFoundError:
            raise StaleEntry(NOT_CACHED) from None
        except (OSError, ValueError) as error:
            raise StaleEntry(f"unreadable manifest ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("key") != key.as_dict():
            raise StaleEntry("manifest made for another key")
        contents = {}
        for name in _FILES:
            try:
                contents[name] = (folder / name).read_bytes()
            except OSError as error:
                raise StaleEntry(f"{name} unreadable ({error.strerror or error})") from None
            if _sha256(contents[name]) != manifest.get("files", {}).get(name):
                raise StaleEntry(f"{name} does not match its recorded hash")
        try:
            return core.read_model(contents["model.xml"], contents["model.bin"])
        except Exception as error:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors of many kinds
            raise StaleEntry(f"OpenVINO cannot read it ({type(error).__name__})") from None

    def store(self, key: CacheKey, model: Any) -> Path:
        """Save ``model`` as ``key``'s entry, replacing any old one; readers never see a half-written entry as valid."""
        import openvino

        folder = self.entry(key)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key.id}.", dir=self.root))
        try:
            openvino.save_model(model, str(staging / "model.xml"), compress_to_fp16=key.precision != "fp32")
            hashes = {name: _sha256((staging / name).read_bytes()) for name in _FILES}
            (folder / _MANIFEST).unlink(missing_ok=True)  # from here until the new manifest lands the entry is invalid
            for name in _FILES:
                os.replace(staging / name, folder / name)
            manifest = {"key": key.as_dict(), "files": hashes}
            (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2))
            os.replace(staging / _MANIFEST, folder / _MANIFEST)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def discard(self, key: CacheKey) -> None:
        """Remove ``key``'s entry (a model that must not be used again)."""
        shutil.rmtree(self.entry(key), ignore_errors=True)

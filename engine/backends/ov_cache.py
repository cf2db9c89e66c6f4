"""On-disk cache of OpenVINO models converted from the fold networks, so only the first run pays for conversion.

An entry is a folder named after its key (network weights and structure, input shape, precision, OpenVINO
version) holding ``model.xml``, ``model.bin`` and ``manifest.json``. The manifest records the key and the sha256 of
both model files; it is written last, so an entry without one is unfinished. Loading verifies the key and the hashes
of the exact bytes it parses: a corrupt, truncated or stale entry is never trusted but rebuilt by the caller.

A model is written to a private staging folder first (:meth:`ModelCache.stage`) and becomes an entry only when the
caller has checked it against torch (:meth:`ModelCache.commit`). Hashes only catch accidents, since whoever can
write an entry can rewrite its manifest too, so the cache folders must be private: on POSIX the folders Tilewise
creates get mode 0o700, and a cache root or entry folder that another user owns or that group or world may write
is refused (:func:`check_private`). On Windows the per-user ``%LOCALAPPDATA%`` is private already and is not
checked. :class:`VerifiedEntries` remembers which entries agreed with torch in this process, and each entry's
``verified.json`` the machines (:func:`~tilewise.engine.backends.openvino_backend.machine_identity`) on which
exactly its files agreed with torch, so the backend checks an entry against torch once per machine: the check
costs a whole-tile torch pass (tens of seconds and gigabytes for a large network on a CPU), and a record bound to
the files' hashes is as trustworthy as the private folder that holds the model itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TilewiseError
from ..runtime.cache_dir import CACHE_DIR_VARIABLE, user_cache_dir

FORMAT_VERSION = 2  # bump whenever conversion changes what a cached model computes (2: pooled instance norms)
_FILES = ("model.xml", "model.bin")
_MANIFEST = "manifest.json"
_VERIFIED = "verified.json"
PRIVATE_MODE = 0o700
NOT_CACHED = "not cached yet"
"""Why :meth:`ModelCache.load` fails for a key that was never stored."""


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


def _fingerprint(key: CacheKey, hashes: dict[str, str]) -> str:
    return ":".join([key.id, *(hashes[name] for name in _FILES)])


def check_private(folder: Path) -> None:
    """Refuse ``folder`` (raise :class:`TilewiseError`) when a user other than the current one owns it or group or
    world may write in it: anyone who can write a cache entry can make Tilewise run a model of their choosing.
    Nothing is checked on Windows, where the per-user ``%LOCALAPPDATA%`` is private already."""
    if os.name != "posix" or not hasattr(os, "getuid"):
        return
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise TilewiseError(folder, "this model cache folder belongs to another user, so its models cannot be "
                                    f"trusted; set {CACHE_DIR_VARIABLE} to a folder of your own")
    if info.st_mode & 0o022:
        raise TilewiseError(folder, f"this model cache folder is writable by other users (mode "
                                    f"{oct(info.st_mode & 0o777)}), so its models cannot be trusted; run "
                                    f"'chmod 700 {folder}' or set {CACHE_DIR_VARIABLE} to a private folder")


def _private_mkdir(folder: Path) -> bool:
    """Create ``folder`` with mode 0o700; False if it exists already."""
    try:
        folder.mkdir(mode=PRIVATE_MODE)
    except FileExistsError:
        return False
    if os.name == "posix":
        os.chmod(folder, PRIVATE_MODE)  # mkdir's mode passes through the umask, which may also take the owner's bits
    return True


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and every missing folder above it with mode 0o700 (``mkdir -p`` would use the umask)."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        _private_mkdir(path)


class StaleEntry(Exception):
    """A cache entry that is missing, unfinished, corrupt or made for another key."""


@dataclass(frozen=True)
class CachedModel:
    """A model read from the cache (or from a staging folder), with the fingerprint of the bytes it was read from."""

    model: Any
    """The ``openvino.Model``."""
    fingerprint: str
    """Entry id and the sha256 of both files: what :class:`VerifiedEntries` remembers."""


def _read(key: CacheKey, contents: dict[str, bytes], hashes: dict[str, str], core: Any) -> CachedModel:
    """The model parsed from exactly the bytes that were hashed."""
    try:
        model = core.read_model(contents["model.xml"], contents["model.bin"])
    except Exception as error:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors of many kinds
        raise StaleEntry(f"OpenVINO cannot read it ({type(error).__name__})") from None
    return CachedModel(model, _fingerprint(key, hashes))


@dataclass(frozen=True)
class Staged:
    """A converted model written to a private staging folder and read back, not yet an entry."""

    key: CacheKey
    folder: Path
    cached: CachedModel
    hashes: dict[str, str]


class VerifiedEntries:
    """The entries (by fingerprint) that agreed or disagreed with torch in this process; thread-safe, and
    :meth:`lock` serialises the check of one entry so that two threads loading it check it once."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._results: dict[str, bool] = {}

    def lock(self, fingerprint: str) -> threading.Lock:
        """The lock to hold while checking the entry with this fingerprint."""
        with self._guard:
            return self._locks.setdefault(fingerprint, threading.Lock())

    def result(self, fingerprint: str) -> bool | None:
        """True if it agreed with torch, False if it did not, None if it was not checked in this process."""
        with self._guard:
            return self._results.get(fingerprint)

    def record(self, fingerprint: str, agreed: bool) -> None:
        """Remember the outcome of checking the entry with this fingerprint."""
        with self._guard:
            self._results[fingerprint] = agreed

    def clear(self) -> None:
        """Forget every outcome (as a new process would)."""
        with self._guard:
            self._results.clear()


class ModelCache:
    """Converted OpenVINO models under ``root`` (default: :func:`openvino_cache_dir`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else openvino_cache_dir()

    def entry(self, key: CacheKey) -> Path:
        """The folder of ``key``'s entry (it may not exist)."""
        return self.root / key.id

    def load(self, key: CacheKey, core: Any) -> CachedModel:
        """The cached model for ``key``; raises :class:`StaleEntry` saying why it cannot be trusted, and
        :class:`TilewiseError` when the cache folders are not private (:func:`check_private`)."""
        folder = self.entry(key)
        if not self.root.is_dir():
            raise StaleEntry(NOT_CACHED)
        check_private(self.root)
        if not folder.is_dir():
            raise StaleEntry(NOT_CACHED)
        check_private(folder)
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
        except FileNotFoundError:
            raise StaleEntry(NOT_CACHED) from None
        except (OSError, ValueError) as error:
            raise StaleEntry(f"unreadable manifest ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("key") != key.as_dict():
            raise StaleEntry("manifest made for another key")
        contents, hashes = {}, {}
        for name in _FILES:
            try:
                contents[name] = (folder / name).read_bytes()
            except OSError as error:
                raise StaleEntry(f"{name} unreadable ({error.strerror or error})") from None
            hashes[name] = _sha256(contents[name])
            if hashes[name] != manifest.get("files", {}).get(name):
                raise StaleEntry(f"{name} does not match its recorded hash")
        return _read(key, contents, hashes, core)

    def verified_on(self, key: CacheKey, fingerprint: str, machine: str) -> bool:
        """True when ``key``'s entry records that exactly the files of ``fingerprint`` agreed with torch on
        ``machine``; False when it does not or the record cannot be read."""
        return machine in self._verified_machines(key, fingerprint)

    def record_verified(self, key: CacheKey, fingerprint: str, machine: str) -> None:
        """Record in ``key``'s entry that the files of ``fingerprint`` agreed with torch on ``machine``. Best effort:
        a record that cannot be written only means the entry is checked again next time. The record is replaced
        whole, so a reader never sees half of one."""
        folder = self.entry(key)
        machines = sorted({*self._verified_machines(key, fingerprint), machine})
        try:
            check_private(folder)
            handle, staging = tempfile.mkstemp(prefix=f".{_VERIFIED}.", dir=folder)
        except (OSError, TilewiseError):
            return
        try:
            with os.fdopen(handle, "w") as file:
                json.dump({"fingerprint": fingerprint, "machines": machines}, file, indent=2)
            os.replace(staging, folder / _VERIFIED)
        except OSError:
            Path(staging).unlink(missing_ok=True)

    def _verified_machines(self, key: CacheKey, fingerprint: str) -> list[str]:
        """The machines ``key``'s entry records for the files of ``fingerprint`` (none for other files)."""
        try:
            record = json.loads((self.entry(key) / _VERIFIED).read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
            return []
        machines = record.get("machines")
        return [m for m in machines if isinstance(m, str)] if isinstance(machines, list) else []

    def has(self, key: CacheKey) -> bool:
        """True when ``key`` has a finished entry (its manifest names this key); read-only and cheap, for the time
        estimates: the files are not hashed or parsed, so :meth:`load` may still find the entry stale."""
        try:
            manifest = json.loads((self.entry(key) / _MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and manifest.get("key") == key.as_dict()

    def ensure_root(self) -> Path:
        """Create the cache root (and the folders above it that are missing) private to the user, and refuse it if it
        is not private. Raises OSError when it cannot be created."""
        make_private_dirs(self.root)
        check_private(self.root)
        return self.root

    def stage(self, key: CacheKey, model: Any, core: Any) -> Staged:
        """Write ``model`` to a private staging folder and read it back as later runs will load it."""
        import openvino

        staging = Path(tempfile.mkdtemp(prefix=f".{key.id}.", dir=self.ensure_root()))  # mkdtemp: mode 0o700
        try:
            openvino.save_model(model, str(staging / "model.xml"), compress_to_fp16=key.precision != "fp32")
            contents = {name: (staging / name).read_bytes() for name in _FILES}
            hashes = {name: _sha256(data) for name, data in contents.items()}
            return Staged(key, staging, _read(key, contents, hashes, core), hashes)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def commit(self, staged: Staged) -> Path:
        """Make ``staged`` its key's entry, replacing any old one; readers never see a half-written entry as valid."""
        folder = self.entry(staged.key)
        _private_mkdir(folder)
        check_private(folder)
        (folder / _MANIFEST).unlink(missing_ok=True)  # from here until the new manifest lands the entry is invalid
        (folder / _VERIFIED).unlink(missing_ok=True)  # the old files' record: the new ones are recorded by the caller
        for name in _FILES:
            os.replace(staged.folder / name, folder / name)
        manifest = {"key": staged.key.as_dict(), "files": staged.hashes}
        (staged.folder / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.replace(staged.folder / _MANIFEST, folder / _MANIFEST)
        return folder

    @staticmethod
    def release(staged: Staged) -> None:
        """Remove ``staged``'s staging folder (after :meth:`commit`, or instead of it)."""
        shutil.rmtree(staged.folder, ignore_errors=True)

    def discard(self, key: CacheKey) -> None:
        """Remove ``key``'s entry (a model that must not be used again)."""
        shutil.rmtree(self.entry(key), ignore_errors=True)

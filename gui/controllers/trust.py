"""Which model folders the person trusted, remembered by their content: plans.json and every checkpoint file.

Trusting a model lets the engine fully unpickle its checkpoints and import the classes its plans.json names; both can
run code stored in those files. So trust is kept for the files' content (sha256), not for the folder's path: a folder
whose files have changed is asked about again, and an unchanged copy elsewhere stays trusted.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qtpy.QtCore import QObject, QSettings, Signal

SETTINGS_TRUSTED_CONTENT = "models/trusted_content"
"""JSON list of the trusted contents: for each, {file relative to the model folder: [size, sha256]}."""
_CHUNK = 1 << 20
_DIGESTS: dict[tuple[str, int, int], str] = {}
"""sha256 per (file, size, modification time): checkpoints can be hundreds of MB, hashed once per change."""


def trust_files(model_dir: Path) -> list[Path]:
    """The files that trust covers: plans.json and every checkpoint (fold_*/*.pth), in a stable order."""
    model_dir = Path(model_dir)
    files = [model_dir / "plans.json"] if (model_dir / "plans.json").is_file() else []
    return files + sorted(p for p in model_dir.glob("fold_*/*.pth") if p.is_file())


def file_digest(path: Path) -> str:
    """sha256 of ``path``, read in chunks; cached until the file's size or modification time changes."""
    status = path.stat()
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _sizes(model_dir: Path) -> dict[str, int]:
    return {p.relative_to(model_dir).as_posix(): p.stat().st_size for p in trust_files(model_dir)}


def _content(model_dir: Path) -> dict[str, list]:
    return {p.relative_to(model_dir).as_posix(): [p.stat().st_size, file_digest(p)] for p in trust_files(model_dir)}


class TrustStore(QObject):
    """The trusted model contents, remembered in QSettings across sessions."""

    trusted = Signal(str)  # a model folder that has just been trusted

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings

    def _contents(self) -> list[dict[str, list]]:
        try:
            contents = json.loads(str(self.settings.value(SETTINGS_TRUSTED_CONTENT, "[]")))
        except ValueError:
            return []
        return [c for c in contents if isinstance(c, dict)] if isinstance(contents, list) else []

    def files(self, model_dir: Path) -> list[Path]:
        """The files trusting ``model_dir`` would cover (see :func:`trust_files`)."""
        return trust_files(Path(model_dir))

    def is_trusted(self, model_dir: Path) -> bool:
        """True when the files of ``model_dir`` are exactly files the person trusted (the folder's path is not
        considered). Cheap for folders never trusted: files are hashed only when their names and sizes match."""
        model_dir = Path(model_dir)
        try:
            sizes = _sizes(model_dir)
            candidates = [c for c in self._contents()
                          if sizes and {name: entry[0] for name, entry in c.items()} == sizes]
            return bool(candidates) and _content(model_dir) in candidates
        except (OSError, TypeError, IndexError):  # files vanished meanwhile, or a damaged setting
            return False

    def trust(self, model_dir: Path) -> None:
        """Remember that the current files of ``model_dir`` may be fully unpickled and their classes imported."""
        model_dir = Path(model_dir)
        content = _content(model_dir)
        contents = self._contents()
        if content and content not in contents:
            self.settings.setValue(SETTINGS_TRUSTED_CONTENT, json.dumps(contents + [content]))
        self.trusted.emit(str(model_dir))

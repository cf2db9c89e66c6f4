"""PyInstaller runtime hook: let the frozen Tilewise use a CUDA build of torch that the user added.

The installer carries the CPU build of torch (PyPI's Windows torch is CPU-only, and a CUDA torch would push the
installer over NSIS's 2 GB limit). A GPU user installs a CUDA torch *next to* the app, in a folder of its own:

    pip install --no-deps --target "%LOCALAPPDATA%\\Tilewise\\cuda-torch" torch==2.13.0 ^
        --index-url https://download.pytorch.org/whl/cu126

This hook runs before any of the app's code. When such a folder holds a torch package built for this Python, it goes
first on ``sys.path``, so ``import torch`` loads the CUDA build instead of the bundled CPU one, and the engine's
``device="auto"`` then picks the GPU. Folders looked at, first match wins:

1. ``$TILEWISE_TORCH_PATH`` (any folder with a ``torch`` package in it); ``TILEWISE_TORCH_PATH=bundled`` turns the
   lookup off and keeps the bundled CPU torch;
2. ``%LOCALAPPDATA%\\Tilewise\\cuda-torch`` on Windows, ``${XDG_DATA_HOME:-~/.local/share}/tilewise/cuda-torch``
   elsewhere.

The folder used is published as ``$TILEWISE_TORCH_OVERRIDE`` (for reports). A folder whose torch was built for
another Python is skipped with a warning on stderr: importing it would fail.

Also importable as a plain module (tests call :func:`find_torch_override` and :func:`apply_torch_override`); only
the frozen app applies it on import.
"""
from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence
from pathlib import Path

ENV_PATH = "TILEWISE_TORCH_PATH"
"""Environment variable naming a folder that holds a torch package (or ``bundled`` to ignore every such folder)."""
ENV_USED = "TILEWISE_TORCH_OVERRIDE"
"""Set by the hook to the folder whose torch was put first on ``sys.path``."""
DISABLE = "bundled"
FOLDER_NAME = "cuda-torch"


def default_folder(environ: Mapping[str, str], platform: str = sys.platform) -> Path | None:
    """Where the installer's README tells GPU users to put CUDA torch, for this platform (None if unknown)."""
    if platform == "win32":
        local = environ.get("LOCALAPPDATA")
        return Path(local) / "Tilewise" / FOLDER_NAME if local else None
    data = environ.get("XDG_DATA_HOME") or (str(Path(environ["HOME"]) / ".local" / "share") if environ.get("HOME") else "")
    return Path(data) / "tilewise" / FOLDER_NAME if data else None


def torch_problem(folder: Path, extension_suffixes: list[str] | None = None) -> str | None:
    """Why ``folder`` cannot supply torch to this Python (None when it can)."""
    package = folder / "torch"
    if not (package / "__init__.py").is_file():
        return f"{folder} holds no torch package (torch/__init__.py is missing)"
    suffixes = importlib.machinery.EXTENSION_SUFFIXES if extension_suffixes is None else extension_suffixes
    # torch/_C.<tag> is the compiled core; a tag for another Python (cp312 in a cp311 app) cannot be imported.
    tagged = [suffix for suffix in suffixes if suffix not in (".so", ".pyd")] or suffixes
    if not any((package / f"_C{suffix}").is_file() for suffix in tagged):
        found = sorted(path.name for path in package.glob("_C.*"))
        return (f"{package} was built for another Python ({', '.join(found) or 'no torch/_C extension'}; this app "
                f"needs _C{tagged[0]}): reinstall it with this Python's version, see the installer README")
    return None


def find_torch_override(environ: Mapping[str, str], platform: str = sys.platform,
                        extension_suffixes: list[str] | None = None,
                        warn: Callable[[str], None] | None = None) -> Path | None:
    """The folder whose torch should shadow the bundled one, or None to keep the bundled CPU torch."""
    explicit = environ.get(ENV_PATH, "").strip()
    if explicit.lower() == DISABLE:
        return None
    candidates = [Path(explicit).expanduser()] if explicit else []
    if (fallback := default_folder(environ, platform)) is not None:
        candidates.append(fallback)
    for index, folder in enumerate(candidates):
        if not folder.is_dir():
            if explicit and index == 0 and warn is not None:
                warn(f"{ENV_PATH}={explicit}: no such folder; using the bundled torch")
            continue
        problem = torch_problem(folder, extension_suffixes)
        if problem is None:
            return folder.resolve()
        if warn is not None and (index == 0 and explicit or (folder / "torch").exists()):
            warn(f"{problem}; using the bundled torch")
    return None


def apply_torch_override(path: MutableSequence[str] | None = None, env: MutableMapping[str, str] | None = None,
                         platform: str = sys.platform) -> Path | None:
    """Put the override folder (if any) first on ``path`` (default ``sys.path``); record it in ``env`` (``os.environ``)."""
    environment = os.environ if env is None else env
    search_path = sys.path if path is None else path
    folder = find_torch_override(environment, platform, warn=_warn)
    if folder is None:
        return None
    entry = str(folder)
    if entry in search_path:
        search_path.remove(entry)
    search_path.insert(0, entry)
    environment[ENV_USED] = entry
    return folder


def _warn(message: str) -> None:
    if sys.stderr is not None:  # the windowed launcher has no console
        print(f"tilewise: warning: {message}", file=sys.stderr)


if getattr(sys, "frozen", False):  # PyInstaller runs runtime hooks as scripts, before the app's code
    apply_torch_override()

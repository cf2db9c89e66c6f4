"""Loading nnU-Net checkpoints without running arbitrary code.

Checkpoints written by ``nnUNetv2_train`` hold numpy scalars (in ``logging`` and ``_best_ema``) and a
``torch.device`` (in ``init_args``), so plain ``torch.load(weights_only=True)`` rejects every real one. We allow
exactly those types and keep refusing everything else unless the caller trusts the folder.
"""
from __future__ import annotations

import pickle
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, UntrustedCheckpointError

TRUST_FLAG = "--trust-model"


def _numpy_scalar_globals() -> list[Any]:
    allowed: list[Any] = [np.dtype, torch.device]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar"])
        except ImportError:
            continue
        allowed.append(getattr(module, "scalar"))
        break
    allowed.extend(getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType"))
    return allowed


SAFE_GLOBALS: tuple[Any, ...] = tuple(_numpy_scalar_globals())
_SAFE_LOAD_LOCK = threading.Lock()
"""``torch.serialization.safe_globals`` changes a process-wide list: two threads loading at once (the viewer's
time estimate and a run) would remove each other's allowed types mid-load."""


def load_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """Load an nnU-Net checkpoint onto the CPU.

    Safe loading (tensors, containers, numpy scalars, torch.device) is always tried first. A checkpoint that needs
    more raises :class:`UntrustedCheckpointError` unless ``trust`` is True.
    """
    if not path.is_file():
        raise ModelError(path, "checkpoint file not found")
    try:
        with _SAFE_LOAD_LOCK, torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            blocked = _blocked_global(str(error))
            raise UntrustedCheckpointError(
                path,
                f"checkpoint holds {blocked} besides weights and needs full unpickling, which can run code; "
                f"pass {TRUST_FLAG} only if you trust where this model came from",
            ) from None
        checkpoint = _load_trusted(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ModelError(path, f"checkpoint is corrupt or truncated ({str(error).splitlines()[0][:160]})") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(path, "not an nnU-Net checkpoint (no 'network_weights' entry)")
    return checkpoint


def _load_trusted(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure of a full unpickle is a broken checkpoint
        raise ModelError(path, f"checkpoint cannot be loaded ({str(error).splitlines()[0][:160]})") from None


def _blocked_global(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global: GLOBAL" in line:
            name = line.split("GLOBAL", 1)[1].strip().split(" ")[0]
            return f"an object of type {name}"
    return "objects"

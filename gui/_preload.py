"""Native libraries that must load before Qt's OpenGL stack.

On Linux with Mesa's software or open-source GL drivers, the OpenGL context napari creates loads ``libLLVM``; Triton
(which torch imports lazily, e.g. when nnU-Net's trainer module is imported for a custom trainer) bundles its own
LLVM, and loading it after Mesa's crashes the process. Loaded first, both coexist. Costs about 0.1 s.
"""
from __future__ import annotations

import importlib


def preload_native_libraries() -> None:
    """Import Triton (if installed) now, before any window or OpenGL context exists."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - not installed, or unusable here: torch then never loads it either
        pass

"""What a model folder may make Tilewise run without trust: its checkpoints and the classes its plans.json names.

Checkpoints written by ``nnUNetv2_train`` hold numpy scalars (in ``logging`` and ``_best_ema``) and a
``torch.device`` (in ``init_args``), so plain ``torch.load(weights_only=True)`` rejects every real one. We allow
exactly those types and keep refusing everything else unless the caller trusts the folder.

plans.json names classes by dotted path that nnunetv2 imports (``pydoc.locate``) and calls: the network and the
``_kw_requires_import`` entries of its arguments. Importing a module runs its code, so without trust they must lie in
the packages nnU-Net's planners write (:data:`KNOWN_NETWORK_PACKAGES`), checked before anything is imported.
"""
from __future__ import annotations

import pickle
import pydoc
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, UntrustedCheckpointError
from ..runtime.quiet import silenced_stdout

TRUST_FLAG = "--trust-model"


def _numpy_scalar_globals() -> list[Any]:
    """What ``nnUNetv2_train`` checkpoints hold besides tensors, plain containers, numbers and strings.

    Found by saving checkpoints with nnUNetTrainer itself (tests/test_model_trust.py does, and checks what they hold):

    * numpy's scalar rebuilder: ``logging`` (train/val losses, pseudo Dice, its EMA) and ``_best_ema`` are numpy
      scalars. numpy 2 pickles it as ``numpy._core.multiarray.scalar``, numpy 1.x as
      ``numpy.core.multiarray.scalar``: one function, allowed under both names (torch >= 2.6 takes the alias).
    * ``numpy.dtype``: every pickled scalar rebuilds its dtype by calling it.
    * the class of the float32 dtype (``numpy.dtypes.Float32DType``): torch checks the class of the rebuilt dtype;
      nnUNetTrainer logs float32 (losses of float32 tensors, Dice of float32 tp/fp/fn).
    * the class of the float64 dtype (``Float64DType``): under numpy 1.x (value-based casting, before NEP 50) the
      logged EMA, float32 * 0.9 + 0.1 * float32, and so ``_best_ema`` become float64.
    * ``torch.device``: ``init_args['device']`` (recent torch allows it anyway; listed for older releases).

    No other numpy type (no arrays, no integer, complex or float16 scalars) appears in a real checkpoint.
    """
    scalar = None
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 first: no deprecation
        try:
            scalar = getattr(__import__(module_name, fromlist=["scalar"]), "scalar")
            break
        except (ImportError, AttributeError):
            continue
    allowed: list[Any] = [np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64)), torch.device]
    if scalar is not None:
        if torch.__version__ >= (2, 6):
            allowed += [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar")]
        else:
            allowed.append(scalar)
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
        if "but got <class '" in line:  # an allowed rebuilder made an object of a type not allowed (a numpy dtype)
            return f"an object of type {line.split(chr(39))[1]}"
    return "objects"


# ---- plans.json -----------------------------------------------------------------------------------------------------
KNOWN_NETWORK_PACKAGES: tuple[str, ...] = ("dynamic_network_architectures", "torch.nn", "nnunetv2")
"""Where plans.json's dotted paths may point without trust: the packages nnU-Net's own planners write."""
_OLD_FORMAT_NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet")  # nnunetv2 maps these to dynamic_network_architectures
NAMED_IN_PLANS = ("preprocessor_name", "resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities",
                  "label_manager")
"""Names (not paths) that nnunetv2 looks up with its recursive search, which imports only the modules of one folder
of the installed nnunetv2 (preprocessing, preprocessing/resampling, utilities/label_handling), whatever the name:
the name cannot make it import anything else, so these need no check before importing. The name does pick an
attribute of those modules, which also hold helpers imported from elsewhere (load_pickle, save_json, ...): without
trust, what it picks must be defined in nnunetv2 (:func:`check_named_objects`). ``image_reader_writer`` is
looked up the same way and held to ``nnunetv2.imageio`` where it is used (:mod:`~tilewise.engine.data.model_reader`);
Tilewise never asks for ``experiment_planner_name``."""


class UntrustedPlansError(UntrustedCheckpointError):
    """plans.json names code outside the known network packages; importing it may run arbitrary code.

    A kind of :class:`UntrustedCheckpointError`, so whoever asks before trusting a checkpoint (the viewer) asks here
    too: trust covers the whole model folder."""


def _is_known(dotted: str) -> bool:
    return any(dotted == package or dotted.startswith(package + ".") for package in KNOWN_NETWORK_PACKAGES)


_KNOWN = f"the known network packages ({', '.join(KNOWN_NETWORK_PACKAGES)})"


def _untrusted(plans_path: Path, what: str, dotted: str, found: str = "", allowed: str = _KNOWN,
               use: str = "importing") -> UntrustedPlansError:
    where = f", which is {found}," if found else ""
    return UntrustedPlansError(plans_path, f"{what} '{dotted}'{where} is not in {allowed} and {use} it can run code; "
                                           f"pass {TRUST_FLAG} only if you trust where this model came from")


def resolved_configuration(plans: dict[str, Any], name: str, plans_path: Path) -> dict[str, Any]:
    """Configuration ``name`` of plans.json with ``inherits_from`` applied, as nnunetv2's PlansManager does it."""
    configurations = plans.get("configurations") or {}
    chain: list[str] = []
    while name not in chain:
        if not isinstance(configurations.get(name), dict):
            raise ModelError(plans_path, f"configuration '{name}' is not in plans.json")
        chain.append(name)
        name = configurations[name].get("inherits_from")
        if name is None:
            resolved: dict[str, Any] = {}
            for link in reversed(chain):
                resolved.update(configurations[link])
            return resolved
    raise ModelError(plans_path, f"configurations inherit from each other in a circle ({' -> '.join(chain)})")


def network_imports(configuration: dict[str, Any], plans_path: Path) -> list[tuple[str, str]]:
    """(what, dotted path) for everything nnunetv2's ``get_network_from_plans`` imports with ``pydoc.locate``."""
    architecture = configuration.get("architecture")
    if architecture is None:  # old plans format: nnunetv2 writes the dynamic_network_architectures paths itself
        if configuration.get("UNet_class_name") not in _OLD_FORMAT_NETWORKS:
            raise ModelError(plans_path, f"old-format plans name the network {configuration.get('UNet_class_name')!r}"
                                         f", which nnunetv2 cannot convert (only {', '.join(_OLD_FORMAT_NETWORKS)})")
        return []
    kwargs, required = architecture.get("arch_kwargs") or {}, architecture.get("_kw_requires_import") or []
    imports = [("the network class", architecture.get("network_class_name"))]
    for key in required:
        if key not in kwargs:
            raise ModelError(plans_path, f"_kw_requires_import lists '{key}', which arch_kwargs does not set")
        if kwargs[key] is not None:
            imports.append((f"arch_kwargs '{key}' (in _kw_requires_import)", kwargs[key]))
    for what, dotted in imports:
        if not isinstance(dotted, str) or not all(part.isidentifier() for part in dotted.split(".")):
            raise ModelError(plans_path, f"{what} {dotted!r} is not a dotted Python path")
    return imports


def check_plans(plans: dict[str, Any], configuration_name: str, plans_path: Path, trust: bool) -> None:
    """Before anything is imported: refuse the network and ``_kw_requires_import`` paths outside the known network
    packages unless ``trust``, and names for nnunetv2's search that are not plain names."""
    if configuration_name not in (plans.get("configurations") or {}):
        return  # the bundle reports it
    configuration = resolved_configuration(plans, configuration_name, plans_path)
    for what, dotted in network_imports(configuration, plans_path):
        if not trust and not _is_known(dotted):
            raise _untrusted(plans_path, what, dotted)
    for key in NAMED_IN_PLANS:
        source = plans if key == "label_manager" else configuration
        if key in source and not (isinstance(source[key], str) and source[key].isidentifier()):
            raise ModelError(plans_path, f"{key} {source[key]!r} is not a name nnunetv2 can look up")


def check_located(configuration: dict[str, Any], plans_path: Path) -> None:
    """Without trust, after :func:`check_plans`: a path inside a known package can still lead out of it
    (``torch.nn.modules.module.torch.load``), so what ``pydoc.locate`` finds must be defined there too. Locating
    imports only the modules the path names, which :func:`check_plans` has kept to the known packages."""
    for what, dotted in network_imports(configuration, plans_path):
        module = getattr(pydoc.locate(dotted), "__module__", None) or ""
        if module and not _is_known(module):
            raise _untrusted(plans_path, what, dotted, f"defined in '{module}'")


def check_named_objects(configuration_manager: Any, plans_manager: Any, plans_path: Path) -> None:
    """Without trust: what nnunetv2's search finds for the names in plans.json must be defined in nnunetv2."""
    lookups = {
        "preprocessor_name": lambda: configuration_manager.preprocessor_class,
        "resampling_fn_data": lambda: configuration_manager.resampling_fn_data.func,
        "resampling_fn_seg": lambda: configuration_manager.resampling_fn_seg.func,
        "resampling_fn_probabilities": lambda: configuration_manager.resampling_fn_probabilities.func,
        "label_manager": lambda: plans_manager.label_manager_class,
    }
    for key, lookup in lookups.items():
        name = (plans_manager.plans if key == "label_manager" else configuration_manager.configuration).get(key)
        if name is None:
            continue
        with silenced_stdout():
            try:
                found = lookup()
            except RuntimeError:  # nnunetv2 raises when no module of its folder has that name
                found = None
        module = getattr(found, "__module__", None) or ""
        if found is None:
            raise ModelError(plans_path, f"{key} '{name}' is not found in nnunetv2")
        if not module.startswith("nnunetv2."):
            raise _untrusted(plans_path, key, name, f"defined in '{module}'", allowed="nnunetv2", use="calling")

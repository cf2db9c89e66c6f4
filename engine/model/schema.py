"""A model folder's ``dataset.json`` and ``plans.json`` checked before anything is built from them.

nnunetv2 trusts these files: a ``nonlin`` that names nothing builds a network without activations (it segments,
wrongly and silently), a reader class of the wrong kind fails deep inside with a TypeError, labels given as strings
fail with a ValueError after the model has loaded. Here every key Tilewise relies on is checked first, and a problem
is one :class:`~tilewise.engine.errors.ModelError` naming the file, the key and what is wrong.

Nothing an untrusted folder names is run: dotted paths outside the known network packages are left to
:func:`~tilewise.engine.model.checkpoint.check_plans` (which refuses them without trust); those inside are located
(importing only modules of those packages) and their kind checked; names for nnunetv2's own searches are looked up
only among nnunetv2's modules.
"""
from __future__ import annotations

import inspect
import math
import pydoc
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..runtime.quiet import silenced_stdout
from .checkpoint import _is_known, _untrusted, resolved_configuration

DATASET_JSON = "dataset.json"
PLANS_JSON = "plans.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- dataset.json ---------------------------------------------------------------------------------------------------
def check_dataset_json(dataset: Any, path: Path) -> None:
    """Raise :class:`ModelError` when ``dataset`` (dataset.json at ``path``) lacks channels or has labels nnU-Net
    cannot use: missing, not integers, no background 0, gaps, or regions without a well-formed
    ``regions_class_order``."""
    if not isinstance(dataset, dict):
        raise ModelError(path, "is not a JSON object")
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise ModelError(path, "key 'channel_names': missing or empty (expected {\"0\": \"CT\"} or similar)")
    if sorted(channels, key=str) != sorted((str(i) for i in range(len(channels))), key=str):
        raise ModelError(path, f"key 'channel_names': keys must be 0, 1, ... (got {', '.join(map(str, channels))})")
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelError(path, "key 'labels': missing or empty (expected {\"background\": 0, \"organ\": 1, ...})")
    _check_label_values(labels, path)
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        _check_regions(dataset, labels, path)
    else:
        _check_consecutive(labels, path)


def _check_label_values(labels: dict[str, Any], path: Path) -> None:
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(_is_int(v) and v >= 0 for v in values):
            raise ModelError(path, f"key 'labels': '{name}' is {value!r}; label values must be whole numbers "
                                   "0, 1, 2, ... (or lists of them for regions)")
    background = labels.get("background")
    if background != 0 and 0 not in [v for v in labels.values() if _is_int(v)]:
        raise ModelError(path, "key 'labels': no background label with value 0")
    if background is not None and background != 0:
        raise ModelError(path, f"key 'labels': 'background' is {background!r}; it must be 0")


def _check_consecutive(labels: dict[str, Any], path: Path) -> None:
    values = [v for name, v in labels.items() if name != "ignore"]
    if len(set(values)) != len(values):
        raise ModelError(path, "key 'labels': two labels share a value")
    ignore = labels.get("ignore")
    if ignore is not None and ignore <= max(values):
        raise ModelError(path, "key 'labels': 'ignore' must have the highest value")
    if sorted(values) != list(range(len(values))):
        raise ModelError(path, f"key 'labels': values {sorted(values)} have gaps; nnU-Net needs 0, 1, 2, ... in a row")


def _check_regions(dataset: dict[str, Any], labels: dict[str, Any], path: Path) -> None:
    order = dataset.get("regions_class_order")
    regions = [name for name in labels if name not in ("background", "ignore")]
    if not isinstance(order, list) or not all(_is_int(v) and v > 0 for v in order):
        raise ModelError(path, "key 'regions_class_order': regions need a list of positive whole numbers, one per "
                               "region")
    if len(order) != len(regions):
        raise ModelError(path, f"key 'regions_class_order': {len(order)} value(s) for {len(regions)} region(s)")


def output_channels(dataset: dict[str, Any]) -> int:
    """The network outputs dataset.json implies: one per label (background included) or one per region."""
    labels = {k: v for k, v in dataset["labels"].items() if k != "ignore"}
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        return len([k for k in labels if k != "background"])
    return len(labels)


def check_checkpoint_outputs(dataset: dict[str, Any], weights: dict[str, Any], dataset_path: Path,
                             checkpoint: Path) -> None:
    """Raise :class:`ModelError` when the checkpoint's segmentation layer has another number of output channels
    than dataset.json's labels need (checked on the weights, before any network is built)."""
    heads = [(key, tensor) for key, tensor in weights.items()
             if key.startswith("decoder.seg_layers.") and key.endswith(".weight") and hasattr(tensor, "shape")]
    if not heads:
        return  # a network without nnU-Net's decoder naming: loading the weights tells
    last = max(heads, key=lambda item: int(item[0].split(".")[2]) if item[0].split(".")[2].isdigit() else -1)[1]
    trained, wanted = int(last.shape[0]), output_channels(dataset)
    if trained != wanted:
        raise ModelError(dataset_path, f"key 'labels': {wanted} output(s) listed, but {checkpoint.parent.name}/"
                                       f"{checkpoint.name} was trained with {trained}; the labels do not belong to "
                                       "these weights")


# ---- plans.json -----------------------------------------------------------------------------------------------------
_EXPECTED_KIND = {"conv_op": "a convolution class", "norm_op": "a normalisation layer class",
                  "dropout_op": "a dropout layer class", "nonlin": "an activation layer class"}


def check_plans_json(plans: Any, path: Path, channels: int, trust: bool = False) -> None:
    """Raise :class:`ModelError` for a plans.json (at ``path``) whose configurations, dotted class paths, names for
    nnunetv2's searches, patch sizes or spacings nnU-Net cannot use. ``channels`` is dataset.json's channel count."""
    if not isinstance(plans, dict):
        raise ModelError(path, "is not a JSON object")
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise ModelError(path, "key 'configurations': missing or empty")
    _check_reader(plans.get("image_reader_writer"), path)
    _check_searched(plans, "label_manager", "utilities/label_handling", "LabelManager", path, trust=trust)
    for key in ("transpose_forward", "transpose_backward"):
        value = plans.get(key)
        if value is not None and sorted(value) != [0, 1, 2]:
            raise ModelError(path, f"key '{key}': {value!r} is not an order of the axes 0, 1, 2")
    for name in configurations:
        configuration = resolved_configuration(plans, name, path)
        check_configuration(configuration, f"configurations.{name}", path, channels, trust)


def check_configuration(configuration: dict[str, Any], where: str, path: Path, channels: int, trust: bool) -> None:
    """One (resolved) configuration: patch size, spacing, normalisation, preprocessor, resampling and network."""
    patch = configuration.get("patch_size")
    if not isinstance(patch, list) or len(patch) not in (2, 3) or not all(_is_int(p) and p > 0 for p in patch):
        raise ModelError(path, f"key '{where}.patch_size': {patch!r} is not 2 or 3 positive whole numbers")
    spacing = configuration.get("spacing")
    if not isinstance(spacing, list) or len(spacing) != len(patch) or not all(_is_number(s) and s > 0
                                                                               for s in spacing):
        raise ModelError(path, f"key '{where}.spacing': {spacing!r} is not {len(patch)} positive numbers")
    schemes = configuration.get("normalization_schemes")
    if not isinstance(schemes, list) or len(schemes) != channels:
        raise ModelError(path, f"key '{where}.normalization_schemes': expected {channels} name(s), one per channel "
                               f"of dataset.json (got {schemes!r})")
    for scheme in schemes:
        _check_searched({"normalization": scheme}, "normalization", "preprocessing/normalization",
                        "ImageNormalization", path, f"{where}.normalization_schemes", trust)
    _check_searched(configuration, "preprocessor_name", "preprocessing", "DefaultPreprocessor", path,
                    f"{where}.preprocessor_name", trust)
    for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        _check_searched(configuration, key, "preprocessing/resampling", None, path, f"{where}.{key}", trust)
    architecture = configuration.get("architecture")
    if architecture is not None:
        _check_architecture(architecture, patch, f"{where}.architecture", path, trust)


def _check_architecture(architecture: Any, patch: list[int], where: str, path: Path, trust: bool) -> None:
    from torch import nn
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.conv import _ConvNd
    from torch.nn.modules.dropout import _DropoutNd

    kinds: dict[str, tuple[type, ...]] = {"conv_op": (_ConvNd,), "norm_op": (_NormBase, nn.GroupNorm, nn.LayerNorm),
                                          "dropout_op": (_DropoutNd,)}
    if not isinstance(architecture, dict) or not isinstance(architecture.get("arch_kwargs", {}), dict):
        raise ModelError(path, f"key '{where}': expected network_class_name and arch_kwargs")
    kwargs = architecture.get("arch_kwargs") or {}
    _check_class(architecture.get("network_class_name"), nn.Module, "a network class", f"{where}.network_class_name",
                 path, trust)
    for key in architecture.get("_kw_requires_import") or []:
        if key not in kwargs:
            raise ModelError(path, f"key '{where}._kw_requires_import': lists '{key}', which arch_kwargs does not set")
        if kwargs[key] is None:
            continue
        base = kinds.get(key, (nn.Module,))
        not_these = (_ConvNd, _NormBase, _DropoutNd, nn.Linear) if key == "nonlin" else ()
        _check_class(kwargs[key], base, _EXPECTED_KIND.get(key, "a layer class"), f"{where}.arch_kwargs.{key}",
                     path, trust, not_these)
    strides = kwargs.get("strides")
    if strides is not None:
        _check_divisible(strides, patch, f"{where}.arch_kwargs.strides", path)


def _check_divisible(strides: Any, patch: list[int], where: str, path: Path) -> None:
    """The patch must be divisible by the product of the network's strides on every axis (each pooling halves)."""
    total = [1] * len(patch)
    for stride in strides if isinstance(strides, list) else []:
        per_axis = stride if isinstance(stride, list) else [stride] * len(patch)
        if len(per_axis) != len(patch) or not all(_is_int(s) and s > 0 for s in per_axis):
            raise ModelError(path, f"key '{where}': {stride!r} is not {len(patch)} positive whole numbers")
        total = [t * s for t, s in zip(total, per_axis)]
    if any(p % t for p, t in zip(patch, total)):
        raise ModelError(path, f"key '{where}': the patch size {patch} is not divisible by {total}, which the "
                               "network's poolings need")


def _check_class(dotted: Any, base: type | tuple[type, ...], kind: str, where: str, path: Path, trust: bool,
                 not_these: tuple[type, ...] = ()) -> None:
    if not isinstance(dotted, str) or not dotted or not all(p.isidentifier() for p in dotted.split(".")):
        raise ModelError(path, f"key '{where}': {dotted!r} is not a dotted Python path")
    if not trust and not _is_known(dotted):
        return  # refused without trust by check_plans before anything is imported
    try:
        with silenced_stdout():
            found = pydoc.locate(dotted)
    except pydoc.ErrorDuringImport as error:
        problem = str(error).splitlines()[-1][:160] if str(error) else "import failed"
        raise ModelError(path, f"key '{where}': '{dotted}' cannot be imported ({problem})") from None
    if found is None:
        raise ModelError(path, f"key '{where}': '{dotted}' names nothing (expected {kind})")
    module = str(getattr(found, "__module__", "") or "")
    if not trust and module and not _is_known(module):  # 'torch.nn.modules.module.torch.load' leads out of torch.nn
        raise _untrusted(path, where.rsplit(".", 1)[-1], dotted, f"defined in '{module}'")
    if not (inspect.isclass(found) and issubclass(found, base)) or (inspect.isclass(found)
                                                                   and issubclass(found, not_these)):
        raise ModelError(path, f"key '{where}': '{dotted}' is not {kind}")


_SEARCH_MODULES = {"utilities/label_handling": "nnunetv2.utilities.label_handling",
                   "preprocessing": "nnunetv2.preprocessing",
                   "preprocessing/normalization": "nnunetv2.preprocessing.normalization",
                   "preprocessing/resampling": "nnunetv2.preprocessing.resampling"}


def _check_searched(source: dict[str, Any], key: str, folder: str, base_name: str | None, path: Path,
                    where: str | None = None, trust: bool = False) -> None:
    """A name nnunetv2 looks up among its own modules must be found there, defined there and of the expected kind
    (a subclass of ``base_name``, or a function when None)."""
    where = where or key
    name = source.get(key)
    if name is None:
        return
    if not isinstance(name, str) or not name.isidentifier():
        raise ModelError(path, f"key '{where}': {name!r} is not a name nnunetv2 can look up")
    found = _nnunet_search(folder, name)
    module = str(getattr(found, "__module__", ""))
    if found is None:
        raise ModelError(path, f"key '{where}': '{name}' is not found in nnunetv2")
    if not module.startswith("nnunetv2."):  # a helper nnunetv2's modules import from elsewhere
        if trust:
            return  # trust covers the folder: what it names is the owner's to vouch for
        raise _untrusted(path, key, name, f"defined in '{module}'", allowed="nnunetv2", use="calling")
    if base_name is None:
        if not inspect.isfunction(found):
            raise ModelError(path, f"key '{where}': '{name}' is not a resampling function")
        return
    if not inspect.isclass(found) or base_name not in [c.__name__ for c in found.__mro__]:
        raise ModelError(path, f"key '{where}': '{name}' is not a {base_name} class")


def _nnunet_search(folder: str, name: str) -> Any:
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    with silenced_stdout():
        try:
            return recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / folder), name,
                                               _SEARCH_MODULES[folder])
        except RuntimeError:
            return None


def _check_reader(name: Any, path: Path) -> None:
    """``image_reader_writer``: a concrete reader class of ``nnunetv2.imageio`` (not the abstract base)."""
    if name is None:
        return
    if not isinstance(name, str) or not name.isidentifier():
        raise ModelError(path, f"key 'image_reader_writer': {name!r} is not a reader class name")
    from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    with silenced_stdout():
        try:
            found = recursive_find_reader_writer_by_name(name)
        except RuntimeError:
            found = None
    if found is None or not str(getattr(found, "__module__", "")).startswith("nnunetv2.imageio."):
        raise ModelError(path, f"key 'image_reader_writer': '{name}' is not a reader nnunetv2 ships")
    if not (inspect.isclass(found) and issubclass(found, BaseReaderWriter)) or inspect.isabstract(found):
        raise ModelError(path, f"key 'image_reader_writer': '{name}' is not a reader class that can read images "
                               "(an abstract base or something else)")


# ---- the folder -----------------------------------------------------------------------------------------------------
def validate_model_json(dataset: Any, plans: Any, model_dir: Path, trust: bool = False) -> None:
    """dataset.json then plans.json of ``model_dir`` (already parsed), as :func:`check_dataset_json` and
    :func:`check_plans_json` check them."""
    check_dataset_json(dataset, model_dir / DATASET_JSON)
    channels = len(dataset.get("channel_names") or dataset.get("modality"))
    check_plans_json(plans, model_dir / PLANS_JSON, channels, trust)

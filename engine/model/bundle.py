"""A trained nnU-Net v2 model folder: plans, labels, folds and one network per fold, built through nnunetv2."""
from __future__ import annotations

import inspect
import json
import pydoc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..events import check_cancelled
from ..runtime.quiet import silenced_stdout
from .checkpoint import (
    check_located,
    check_named_objects,
    check_plans,
    load_checkpoint,
    resolved_configuration,
)
from .labels import label_names
from .schema import check_checkpoint_outputs, validate_model_json
from .trainer_builders import builds_like_stock, remember

CHECKPOINT_NAMES: tuple[str, ...] = ("checkpoint_final.pth", "checkpoint_best.pth")
_FOLD_DIR = re.compile(r"^fold_(\d+|all)$")


def _fold_key(fold: str) -> tuple[int, str]:
    return (1, fold) if fold == "all" else (0, f"{int(fold):06d}")


def available_folds(model_dir: Path, checkpoint_name: str | None = None) -> list[str]:
    """Folds (as strings: '0', '1', ..., 'all') with a checkpoint, in numeric order."""
    names = (checkpoint_name,) if checkpoint_name else CHECKPOINT_NAMES
    folds = [
        match[1]
        for child in model_dir.iterdir()
        if child.is_dir() and (match := _FOLD_DIR.match(child.name)) and any((child / n).is_file() for n in names)
    ]
    return sorted(folds, key=_fold_key)


def resolve_model_dir(model_dir: Path | str) -> Path:
    """A model folder path; the name 'demo' stands for the model bundled with Tilewise."""
    from tilewise.resources import DEMO_MODEL_NAME, demo_model_dir

    if str(model_dir) == DEMO_MODEL_NAME and not Path(DEMO_MODEL_NAME).exists():
        return demo_model_dir()
    return Path(model_dir).expanduser()


def check_model_folder(model_dir: Path | str) -> Path:
    """The model folder ``model_dir`` names ('demo': the bundled one), or :class:`ModelError` in one line when it does
    not exist, is a file, or is one ``fold_N`` folder of a model (then naming the model folder to give instead)."""
    path = resolve_model_dir(model_dir)
    if not path.exists():
        raise ModelError(path, "model folder not found (no such folder)")
    if not path.is_dir():
        raise ModelError(path, "is a file; -m takes a model folder (with dataset.json, plans.json and fold_*)")
    fold = _FOLD_DIR.match(path.name)
    if fold and not (path / "dataset.json").is_file() and (path.parent / "dataset.json").is_file():
        raise ModelError(path, f"is one fold of a model; give the model folder {path.parent} (and -f {fold[1]} for "
                               "this fold alone)")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A model folder's JSON file; :class:`ModelError` (one line) when it is missing or not JSON."""
    if not path.is_file():
        raise ModelError(path.parent, f"not an nnU-Net model folder ({path.name} is missing)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(path, f"invalid JSON ({error})") from None


def dataset_channel_count(model_dir: Path | str) -> int:
    """Image channels per case that the model's dataset.json lists, read before any checkpoint is loaded."""
    path = check_model_folder(model_dir) / "dataset.json"
    dataset_json = read_json(path)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if not channels:
        raise ModelError(path, "lists no channel_names")
    return len(channels)


STOCK_TRAINER = "nnUNetTrainer"


def find_trainer_class(name: str, model_dir: Path | None = None) -> Any:
    """The nnU-Net trainer class called ``name`` (nnunetv2's recursive search, which imports every trainer), or None.

    Raises :class:`ModelError` when a trainer module needs a package that is not installed (e.g. timm for Primus).
    """
    # Safe without trust: nnunetv2 imports only the modules of its own training/nnUNetTrainer folder and of the folders
    # the person named in $nnUNet_extTrainer (the environment, never the model folder); the checkpoint's name only picks
    # an attribute of those modules, and nnunetv2 asserts that it is an nnUNetTrainer subclass.
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    if not name.isidentifier():
        return None
    with silenced_stdout():
        try:
            return recursive_find_trainer_class_by_name(name)
        except RuntimeError:  # nnunetv2 raises when no module defines the class
            return None
        except (AssertionError, TypeError):  # a trainer module has something else by that name
            raise ModelError(model_dir, f"'{name}' is not an nnU-Net trainer class") from None
        except ImportError as error:
            raise ModelError(model_dir, f"trainer '{name}' could not be loaded: it needs the Python package "
                                        f"'{error.name or error}', which is not installed") from None


def _same_dtypes(network: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """True when every weight in ``state`` has the dtype the network gives it, so adopting the tensors themselves
    changes nothing but where the network's weights live."""
    own = network.state_dict()
    return all(key in own and tensor.dtype == own[key].dtype for key, tensor in state.items())


@dataclass
class ModelBundle:
    """Everything needed to run one nnU-Net model: configuration, labels, mirror axes and per-fold networks."""

    path: Path
    dataset_json: dict[str, Any]
    plans: dict[str, Any]
    configuration_name: str
    trainer_name: str
    folds: list[str]
    checkpoint_name: str
    mirror_axes: tuple[int, ...]
    fold_weights: list[dict[str, torch.Tensor]] = field(repr=False)
    trusted: bool = False
    """Loaded with trust: checkpoints fully unpickled if need be, plans.json's classes imported from anywhere."""

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        folds: list[str] | None = None,
        checkpoint_name: str | None = None,
        trust: bool = False,
        fold_count: int | None = None,
    ) -> "ModelBundle":
        """Open an nnU-Net trained-model folder.

        ``folds`` None means every fold with a checkpoint, or the first ``fold_count`` of them. ``checkpoint_name``
        None prefers checkpoint_final.pth and falls back to checkpoint_best.pth. Unless ``trust`` is True, checkpoints
        are loaded safely and plans.json may name classes of the known network packages only (checked before nnunetv2
        imports any); trust covers the whole folder.
        """
        path = check_model_folder(model_dir)
        dataset_json = read_json(path / "dataset.json")
        plans = read_json(path / "plans.json")
        validate_model_json(dataset_json, plans, path, trust)  # before any checkpoint is read or network built
        present = available_folds(path, checkpoint_name)
        if not present:
            wanted = checkpoint_name or " or ".join(CHECKPOINT_NAMES)
            raise ModelError(path, f"no trained folds found (expected fold_*/{wanted})")
        chosen = [str(f) for f in folds] if folds else present[:fold_count]
        missing = [f for f in chosen if f not in present]
        if missing:
            raise ModelError(path, f"fold(s) {', '.join(missing)} not found; available: {', '.join(present)}")

        weights: list[dict[str, torch.Tensor]] = []
        names: list[str] = []
        configuration_name = trainer_name = ""
        mirror_axes: tuple[int, ...] = ()
        for index, fold in enumerate(chosen):
            check_cancelled()  # a large model's checkpoints take seconds each: Cancel lands between them
            name = checkpoint_name or next(n for n in CHECKPOINT_NAMES if (path / f"fold_{fold}" / n).is_file())
            checkpoint = load_checkpoint(path / f"fold_{fold}" / name, trust=trust)
            if index == 0:
                try:
                    configuration_name = str(checkpoint["init_args"]["configuration"])
                    trainer_name = str(checkpoint["trainer_name"])
                except (KeyError, TypeError):
                    raise ModelError(path / f"fold_{fold}" / name, "checkpoint lacks init_args/trainer_name") from None
                axes = checkpoint.get("inference_allowed_mirroring_axes")
                mirror_axes = tuple(int(a) for a in axes) if axes is not None else ()
                check_plans(plans, configuration_name, path / "plans.json", trust)
            check_checkpoint_outputs(dataset_json, checkpoint["network_weights"], path / "dataset.json",
                                     path / f"fold_{fold}" / name)
            weights.append(checkpoint["network_weights"])
            names.append(name)
        bundle = cls(
            path=path,
            dataset_json=dataset_json,
            plans=plans,
            configuration_name=configuration_name,
            trainer_name=trainer_name,
            folds=chosen,
            checkpoint_name=names[0],
            mirror_axes=mirror_axes,
            fold_weights=weights,
            trusted=trust,
        )
        bundle._validate()
        return bundle

    def _validate(self) -> None:
        if self.configuration_name not in self.plans.get("configurations", {}):
            raise ModelError(self.path, f"configuration '{self.configuration_name}' is not in plans.json")
        if not self.trusted:
            check_named_objects(self.configuration_manager, self.plans_manager, self.path / "plans.json")

    # ---- nnU-Net views of the plans -------------------------------------------------------------
    @property
    def plans_manager(self) -> Any:
        """nnunetv2's PlansManager for plans.json."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        if not hasattr(self, "_plans_manager"):
            self._plans_manager = PlansManager(self.plans)
        return self._plans_manager

    @property
    def configuration_manager(self) -> Any:
        """nnunetv2's ConfigurationManager of the configuration the checkpoints were trained with."""
        if not hasattr(self, "_configuration_manager"):
            self._configuration_manager = self.plans_manager.get_configuration(self.configuration_name)
        return self._configuration_manager

    @property
    def label_manager(self) -> Any:
        """nnunetv2's LabelManager (labels, regions, inference non-linearity)."""
        if not hasattr(self, "_label_manager"):
            self._label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        return self._label_manager

    @property
    def num_input_channels(self) -> int:
        """Number of image channels the network expects."""
        from nnunetv2.utilities.label_handling.label_handling import (
            determine_num_input_channels,
        )

        return int(determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json))

    @property
    def image_channel_count(self) -> int:
        """Image channels per case (dataset.json's); a cascade stage's network also takes the previous stage's
        one-hot segmentation (:attr:`num_input_channels` counts both)."""
        return len(self.channel_names)

    @property
    def previous_stage_name(self) -> str | None:
        """The configuration whose segmentation this cascade stage takes as input (e.g. '3d_lowres'), else None."""
        previous = self.configuration_manager.previous_stage_name
        return None if previous is None else str(previous)

    @property
    def channel_names(self) -> list[str]:
        """Channel (modality) names from dataset.json, in channel order."""
        channels = self.dataset_json.get("channel_names") or self.dataset_json.get("modality") or {}
        return [str(channels[k]) for k in sorted(channels, key=int)]

    @property
    def label_names(self) -> dict[int, str]:
        """Output label value -> name, background included (see :func:`~tilewise.engine.model.labels.label_names`)."""
        return label_names(self.dataset_json)

    @property
    def patch_size(self) -> tuple[int, ...]:
        """Network input tile size (2 or 3 axes)."""
        return tuple(int(p) for p in self.configuration_manager.patch_size)

    @property
    def is_2d(self) -> bool:
        """True for a 2d configuration (slices are predicted one by one)."""
        return len(self.patch_size) == 2

    @property
    def dataset_name(self) -> str:
        """Dataset name from dataset.json or plans.json."""
        return str(self.dataset_json.get("name") or self.plans.get("dataset_name") or self.path.name)

    @property
    def file_ending(self) -> str:
        """The dataset's image file ending ('.nii.gz' unless dataset.json says otherwise)."""
        return str(self.dataset_json.get("file_ending", ".nii.gz"))

    # ---- networks -----------------------------------------------------------------------------
    def build_networks(self) -> list[nn.Module]:
        """One network per fold, built as the checkpoint's trainer class builds it (custom trainers and ResEnc work)."""
        num_outputs = self.label_manager.num_segmentation_heads
        if not self.trusted:
            plans_path = self.path / "plans.json"
            check_located(resolved_configuration(self.plans, self.configuration_name, plans_path), plans_path)
        networks = []
        for fold, state in zip(self.folds, self.fold_weights):
            try:
                network = self._build_one(num_outputs)
            except (ImportError, pydoc.ErrorDuringImport) as error:  # (trusted) plans.json names a missing class
                problem = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ModelError(self.path / "plans.json", f"the network cannot be built ({problem})") from None
            try:  # the checkpoint's own tensors become the weights (why: no second copy, 1.1 GB over five models)
                network.load_state_dict(state, assign=_same_dtypes(network, state))
            except RuntimeError as error:
                raise ModelError(self.path / f"fold_{fold}", f"weights do not fit the planned network ({str(error).splitlines()[0]})") from None
            networks.append(network.eval())
        return networks

    def _build_one(self, num_outputs: int) -> nn.Module:
        manager = self.configuration_manager
        if self.trainer_name == STOCK_TRAINER or builds_like_stock(self.trainer_name):
            # nnUNetTrainer.build_network_architecture is exactly this call; finding the trainer costs 3-4 s.
            from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

            return get_network_from_plans(
                manager.network_arch_class_name, manager.network_arch_init_kwargs,
                manager.network_arch_init_kwargs_req_import, self.num_input_channels, num_outputs,
                allow_init=True, deep_supervision=False,
            )
        trainer_class = find_trainer_class(self.trainer_name, self.path)
        if trainer_class is None:
            raise ModelError(self.path, f"trainer class '{self.trainer_name}' not found in nnunetv2 or its plugins")
        remember(self.trainer_name, trainer_class)
        parameters = inspect.signature(trainer_class.build_network_architecture).parameters
        if "plans_manager" in parameters:
            return trainer_class.build_network_architecture(
                self.plans_manager, manager, self.num_input_channels, num_outputs, enable_deep_supervision=False,
            )
        return trainer_class.build_network_architecture(
            manager.network_arch_class_name, manager.network_arch_init_kwargs,
            manager.network_arch_init_kwargs_req_import, self.num_input_channels, num_outputs,
            enable_deep_supervision=False,
        )

"""Model folders: custom trainer classes, fold discovery and label metadata."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import model_factory
from tilewise.engine import ModelBundle, ModelError, Predictor, get_preset, read_volume
from tilewise.engine.model.checkpoint import load_checkpoint


def _rewrite_checkpoint(model_dir: Path, **changes) -> None:
    path = model_dir / "fold_0" / "checkpoint_final.pth"
    checkpoint = load_checkpoint(path)
    checkpoint.update(changes)
    torch.save(checkpoint, path)


def test_custom_trainer_class_is_found_through_nnunet(ct_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ct_model, copy)
    # A trainer variant that ships with nnunetv2; it disables mirroring, so its checkpoints say no mirror axes.
    _rewrite_checkpoint(copy, trainer_name="nnUNetTrainerNoMirroring", inference_allowed_mirroring_axes=None)
    files = model_factory.case_files(tmp_path, "case", "3d")

    predictor = Predictor(copy, get_preset("reference"), device="cpu")
    result = predictor.predict(read_volume(files))

    assert predictor.settings.mirror_axes == ()
    assert result.forward_passes == result.tiles
    reference = model_factory.nnunet_reference(copy, files, folds=(0,), mirroring=True)
    assert (result.labels == reference).mean() >= 0.999


def test_unknown_trainer_is_a_model_error(ct_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ct_model, copy)
    _rewrite_checkpoint(copy, trainer_name="nnUNetTrainerThatDoesNotExist")
    with pytest.raises(ModelError) as caught:
        Predictor(copy, get_preset("fast"), device="cpu")
    assert "nnUNetTrainerThatDoesNotExist" in str(caught.value)


def test_trainer_needing_a_missing_package_is_a_model_error(ct_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """nnunetv2 imports every trainer module while searching; one needing an absent package (Primus needs timm)."""
    import nnunetv2.utilities.find_objects as find_objects

    def search_that_hits_a_missing_package(name: str):
        raise ModuleNotFoundError("No module named 'timm'", name="timm")

    monkeypatch.setattr(find_objects, "recursive_find_trainer_class_by_name", search_that_hits_a_missing_package)
    copy = tmp_path / "model"
    shutil.copytree(ct_model, copy)
    _rewrite_checkpoint(copy, trainer_name="nnUNetTrainer_Primus")
    with pytest.raises(ModelError) as caught:
        Predictor(copy, get_preset("fast"), device="cpu")
    message = str(caught.value)
    assert str(copy) in message and "nnUNetTrainer_Primus" in message and "'timm'" in message
    assert "\n" not in message


def test_weights_that_do_not_fit_the_plans(ct_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ct_model, copy)
    checkpoint = load_checkpoint(copy / "fold_0" / "checkpoint_final.pth")
    weights = dict(checkpoint["network_weights"])
    weights.pop(next(iter(weights)))
    _rewrite_checkpoint(copy, network_weights=weights)
    with pytest.raises(ModelError) as caught:
        Predictor(copy, get_preset("fast"), device="cpu")
    assert "do not fit" in str(caught.value)


def test_folds_and_metadata(make_model) -> None:
    model_dir = make_model("3d", folds=(0, 1, 2))
    bundle = ModelBundle.load(model_dir, folds=["2", "0"])
    assert bundle.folds == ["2", "0"]
    assert bundle.configuration_name == "3d_fullres"
    assert bundle.label_names == {0: "background", 1: "liver", 2: "tumour"}
    assert bundle.channel_names == ["CT"]
    assert bundle.num_input_channels == 1
    assert len(bundle.build_networks()) == 2


def test_region_label_names(make_model) -> None:
    bundle = ModelBundle.load(make_model("regions"))
    assert bundle.label_manager.has_regions
    assert bundle.label_names == {0: "background", 1: "whole", 2: "core", 3: "enhancing"}


def test_fast_preset_uses_first_fold_only(make_model) -> None:
    predictor = Predictor(make_model("3d", folds=(0, 1, 2)), get_preset("fast"), device="cpu")
    assert predictor.settings.folds == ["0"]
    networks = predictor.backend.folds if predictor.backend.name == "openvino" else predictor.networks
    assert len(networks) == 1

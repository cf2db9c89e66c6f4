"""Checkpoints load safely: real nnU-Net checkpoints without trust, anything else only with --trust-model."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import model_factory
from tilewise.engine import ModelBundle, ModelError, UntrustedCheckpointError
from tilewise.engine.model.checkpoint import load_checkpoint


def test_real_checkpoint_needs_the_allow_list(ct_model: Path) -> None:
    path = ct_model / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception):
        torch.load(path, map_location="cpu", weights_only=True)  # plain weights_only rejects nnU-Net's numpy scalars
    checkpoint = load_checkpoint(path)
    assert set(checkpoint) >= {"network_weights", "init_args", "trainer_name"}
    assert isinstance(checkpoint["init_args"]["device"], torch.device)


def test_untrusted_checkpoint_is_refused_then_allowed(ct_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ct_model, copy)
    model_factory.make_untrusted_checkpoint(copy)
    with pytest.raises(UntrustedCheckpointError) as caught:
        ModelBundle.load(copy)
    assert "--trust-model" in str(caught.value) and "checkpoint_final.pth" in str(caught.value)
    bundle = ModelBundle.load(copy, trust=True)
    assert bundle.folds == ["0"]


def test_truncated_checkpoint_is_a_clear_model_error(ct_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ct_model, copy)
    path = copy / "fold_0" / "checkpoint_final.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError) as caught:
        ModelBundle.load(copy)
    assert str(path) in str(caught.value) and "corrupt" in str(caught.value)


def test_checkpoint_best_is_used_when_final_is_missing(ct_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ct_model, copy)
    (copy / "fold_0" / "checkpoint_final.pth").rename(copy / "fold_0" / "checkpoint_best.pth")
    assert ModelBundle.load(copy).checkpoint_name == "checkpoint_best.pth"


def test_missing_fold_names_the_available_ones(ct_model: Path) -> None:
    with pytest.raises(ModelError) as caught:
        ModelBundle.load(ct_model, folds=["3"])
    assert "available: 0" in str(caught.value)


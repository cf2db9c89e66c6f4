"""The demo model and sample volume shipped in resources/: real nnU-Net format, loadable by both engines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import model_factory
from tilewise.engine import ModelBundle, Predictor, get_preset, read_volume
from tilewise.engine.commands.cli import main
from tilewise.resources import demo_model_dir, presets_path, sample_path

MB = 2**20


def test_resources_hold_a_five_fold_model_within_size_limits() -> None:
    model = demo_model_dir()
    assert (model / "dataset.json").is_file() and (model / "plans.json").is_file()
    checkpoints = sorted(model.glob("fold_*/checkpoint_final.pth"))
    assert [c.parent.name for c in checkpoints] == [f"fold_{i}" for i in range(5)]
    assert all(c.stat().st_size <= 4 * MB for c in checkpoints)
    resources = presets_path().parent
    total = sum(f.stat().st_size for f in resources.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    assert total <= 25 * MB
    assert (resources / "demo" / "LICENSE-MNI-ICBM152.txt").is_file()


def test_demo_model_describes_brain_tissue() -> None:
    bundle = ModelBundle.load("demo")
    assert bundle.path == demo_model_dir()
    assert bundle.folds == ["0", "1", "2", "3", "4"]
    assert bundle.label_names == {0: "background", 1: "grey_matter", 2: "white_matter", 3: "csf"}
    assert bundle.channel_names == ["T1"]


@pytest.fixture(scope="module")
def sample():
    return read_volume(sample_path())


def test_nnunet_and_tilewise_agree_on_the_sample(sample) -> None:
    predictor = Predictor("demo", get_preset("fast").with_overrides(precision="fp32"), device="cpu")
    ours = predictor.predict(sample).labels
    theirs = model_factory.nnunet_reference(demo_model_dir(), [sample_path()], folds=(0,), step=0.75, mirroring=False)
    assert ours.shape == theirs.shape == sample.shape
    assert (ours == theirs).mean() >= 0.999
    assert set(np.unique(theirs).tolist()) == {0, 1, 2, 3}


def test_predict_demo_by_name(tmp_path: Path) -> None:
    assert main(["predict", "-i", str(sample_path()), "-o", str(tmp_path), "-m", "demo", "--preset", "preview",
                 "-device", "cpu", "-q"]) == 0
    written = read_volume(tmp_path / "sample_t1.nii.gz")
    assert written.geometry.same_as(read_volume(sample_path()).geometry)

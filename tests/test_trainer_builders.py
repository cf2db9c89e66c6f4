"""A trainer that inherits nnUNetTrainer's network builder is found by nnU-Net's search once per machine: later
processes build its network directly (same network, same outputs) while the files its classes come from are
unchanged; a trainer with a builder of its own is never recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tilewise.engine.model import trainer_builders

INHERITING_TRAINER = "nnUNetTrainerNoMirroring"  # nnunetv2's own, as TotalSegmentator's part models name it

CHILD = textwrap.dedent("""
    import json, sys
    import torch
    from tilewise.engine.model.bundle import ModelBundle

    bundle = ModelBundle.load(sys.argv[1], folds=["0"])
    bundle.trainer_name = sys.argv[2]
    network = bundle.build_networks()[0]
    torch.manual_seed(0)
    with torch.no_grad():
        logits = network(torch.randn(1, bundle.num_input_channels, *bundle.patch_size))
    print(json.dumps({"searched": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer" in sys.modules,
                      "network": type(network).__name__, "logits": logits.double().sum().item()}))
""")


def build_in_child(model: Path, trainer: str, cache: Path) -> dict:
    """Build fold 0's network in a new process as ``trainer`` would; whether nnU-Net's trainer search ran."""
    environment = {**os.environ, "TILEWISE_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(model), trainer], capture_output=True, text=True,
                          env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_inheriting_trainer_is_searched_once_then_built_directly(make_model, tmp_path: Path) -> None:
    model = make_model("3d")
    cache = tmp_path / "cache"
    stock = build_in_child(model, "nnUNetTrainer", tmp_path / "unused")
    first = build_in_child(model, INHERITING_TRAINER, cache)
    assert first["searched"], "the first process finds the trainer with nnU-Net's search"
    second = build_in_child(model, INHERITING_TRAINER, cache)
    assert not second["searched"], "a later process builds the network without the search"
    assert first["network"] == second["network"] == stock["network"]
    assert first["logits"] == second["logits"] == stock["logits"]


def test_a_changed_file_or_record_means_a_new_search(make_model, tmp_path: Path) -> None:
    model = make_model("3d")
    cache = tmp_path / "cache"
    build_in_child(model, INHERITING_TRAINER, cache)
    record_path = cache / trainer_builders.RECORD_FILE
    record = json.loads(record_path.read_text())
    (key, stamps), = record.items()
    assert INHERITING_TRAINER in key and any(path.endswith("nnUNetTrainer.py") for path, _, _ in stamps)
    stamps[0][2] += 1  # as if the trainer's file had been edited since
    record_path.write_text(json.dumps(record))
    assert build_in_child(model, INHERITING_TRAINER, cache)["searched"]
    record_path.write_text("{not json")
    assert build_in_child(model, INHERITING_TRAINER, cache)["searched"]
    assert not build_in_child(model, INHERITING_TRAINER, cache)["searched"], "the search rewrote the record"


def test_a_trainer_with_its_own_builder_is_not_recorded(tmp_path: Path) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class OwnBuilder(nnUNetTrainer):
        @staticmethod
        def build_network_architecture(*args, **kwargs):  # noqa: ANN002, ANN003, ANN205 - nnU-Net's signature
            raise NotImplementedError

    class Inheriting(nnUNetTrainer):
        pass

    trainer_builders.remember("OwnBuilder", OwnBuilder, tmp_path)
    assert not (tmp_path / trainer_builders.RECORD_FILE).exists()
    assert not trainer_builders.builds_like_stock("OwnBuilder", tmp_path)
    trainer_builders.remember("Inheriting", Inheriting, tmp_path)
    assert trainer_builders.builds_like_stock("Inheriting", tmp_path)
    assert not trainer_builders.builds_like_stock("OwnBuilder", tmp_path)


def test_an_unwritable_cache_folder_leaves_the_search_to_run(tmp_path: Path) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class Inheriting(nnUNetTrainer):
        pass

    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    trainer_builders.remember("Inheriting", Inheriting, blocked)  # cannot create the record: no error
    assert not trainer_builders.builds_like_stock("Inheriting", blocked)
    assert [p.name for p in tmp_path.iterdir()] == [blocked.name], "no staging file is left behind"


@pytest.mark.parametrize("variable", ["", "/some/plugins"])
def test_the_record_is_kept_per_plugin_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              variable: str) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class Inheriting(nnUNetTrainer):
        pass

    monkeypatch.setenv("nnUNet_extTrainer", "/other/plugins")
    trainer_builders.remember("Inheriting", Inheriting, tmp_path)
    monkeypatch.setenv("nnUNet_extTrainer", variable)
    assert not trainer_builders.builds_like_stock("Inheriting", tmp_path), "another plugin folder may define it"

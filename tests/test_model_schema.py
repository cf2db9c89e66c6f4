"""A malformed model folder is refused before anything is built from it: one line naming the file, the key and the
problem (exit 2), no traceback, and, for what the JSON files alone show, before any checkpoint is read."""
from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tilewise.engine import ModelError
from tilewise.engine.model import bundle as bundle_module
from tilewise.engine.model.schema import check_dataset_json, check_plans_json, validate_model_json
from tilewise.resources import demo_model_dir

DEMO = demo_model_dir()
SAMPLE = DEMO.parent / "sample_t1.nii.gz"
ERROR_PREFIX = "tilewise: error: "
FULLRES = "3d_fullres"


def demo_copy(folder: Path, plans_change: Callable[[dict], None] | None = None,
              dataset_change: Callable[[dict], None] | None = None) -> Path:
    """The demo model with one fold, its plans.json and dataset.json changed as given."""
    model = Path(shutil.copytree(DEMO, folder / "model", ignore=shutil.ignore_patterns("fold_[1-9]")))
    plans = json.loads((model / "plans.json").read_text())
    dataset = json.loads((model / "dataset.json").read_text())
    if plans_change is not None:
        plans_change(plans)
    if dataset_change is not None:
        dataset_change(dataset)
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps(dataset))
    return model


def fullres(plans: dict) -> dict:
    return plans["configurations"][FULLRES]


def arch(plans: dict) -> dict:
    return fullres(plans)["architecture"]["arch_kwargs"]


def setter(where: Callable[[dict], dict], key: str, value: object) -> Callable[[dict], None]:
    return lambda document: where(document).__setitem__(key, value)


def _top(document: dict) -> dict:
    return document


MALFORMED = [  # (plans change, dataset change, file, key, problem)
    pytest.param(setter(arch, "nonlin", "torch.nn.LeakyReLUU"), None, "plans.json", "nonlin", "names nothing",
                 id="nonlin-resolves-to-nothing"),
    pytest.param(setter(arch, "nonlin", "torch.nn.functional.relu"), None, "plans.json", "nonlin",
                 "not an activation", id="nonlin-a-function"),
    pytest.param(setter(arch, "norm_op", "torch.nn.Conv3d"), None, "plans.json", "norm_op", "not",
                 id="norm-a-convolution"),
    pytest.param(setter(arch, "conv_op", "torch.nn.InstanceNorm3d"), None, "plans.json", "conv_op",
                 "not a convolution", id="conv-a-norm"),
    pytest.param(setter(_top, "image_reader_writer", "BaseReaderWriter"), None, "plans.json", "image_reader_writer",
                 "abstract", id="reader-abstract-base"),
    pytest.param(setter(_top, "image_reader_writer", "NoSuchIO"), None, "plans.json", "image_reader_writer",
                 "not a reader", id="reader-unknown"),
    pytest.param(setter(fullres, "preprocessor_name", "NoSuchPreprocessor"), None, "plans.json",
                 "preprocessor_name", "not found", id="preprocessor-unknown"),
    pytest.param(setter(fullres, "resampling_fn_data", "DefaultPreprocessor"), None, "plans.json",
                 "resampling_fn_data", "not found", id="resampling-not-a-function"),
    pytest.param(setter(fullres, "normalization_schemes", ["ZScoreNormalization", "CTNormalization"]), None,
                 "plans.json", "normalization_schemes", "one per channel", id="normalization-count"),
    pytest.param(setter(fullres, "patch_size", [0, 64, 64]), None, "plans.json", "patch_size", "positive",
                 id="patch-zero"),
    pytest.param(setter(fullres, "patch_size", [-64, 64, 64]), None, "plans.json", "patch_size", "positive",
                 id="patch-negative"),
    pytest.param(setter(fullres, "patch_size", ["64", 64, 64]), None, "plans.json", "patch_size", "whole numbers",
                 id="patch-string"),
    pytest.param(setter(fullres, "patch_size", [63, 64, 64]), None, "plans.json", "strides", "not divisible",
                 id="patch-odd"),
    pytest.param(None, lambda d: d.pop("labels"), "dataset.json", "labels", "missing", id="labels-missing"),
    pytest.param(None, setter(_top, "labels", {"background": "0", "grey": "1", "white": "2", "csf": "3"}),
                 "dataset.json", "labels", "whole numbers", id="labels-strings"),
    pytest.param(None, setter(_top, "labels", {"background": 1, "grey": 0, "white": 2, "csf": 3}), "dataset.json",
                 "labels", "must be 0", id="background-not-0"),
    pytest.param(None, setter(_top, "labels", {"background": 0, "grey": 1, "white": 2, "csf": 5}), "dataset.json",
                 "labels", "gaps", id="labels-with-gaps"),
    pytest.param(None, setter(_top, "labels", {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "x": [3]}),
                 "dataset.json", "regions_class_order", "regions", id="regions-without-order"),
    pytest.param(None, lambda d: d.update(labels={"background": 0, "whole": [1, 2], "core": [2]},
                                          regions_class_order=[1, 2, 3]),
                 "dataset.json", "regions_class_order", "3 value", id="regions-order-length"),
    pytest.param(None, lambda d: d.pop("channel_names"), "dataset.json", "channel_names", "missing",
                 id="channels-missing"),
]


@pytest.mark.parametrize(("plans_change", "dataset_change", "file", "key", "problem"), MALFORMED)
def test_malformed_model_is_refused_before_any_checkpoint_is_read(tmp_path: Path, run_cli, monkeypatch, plans_change,
                                                                  dataset_change, file: str, key: str,
                                                                  problem: str) -> None:
    model = demo_copy(tmp_path, plans_change, dataset_change)
    read: list[Path] = []
    monkeypatch.setattr(bundle_module, "load_checkpoint", lambda path, trust=False: read.append(path))

    code, out, err = run_cli(["predict", "-i", SAMPLE, "-o", tmp_path / "out", "-m", model, "-device", "cpu"])

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR_PREFIX)
    assert str(model / file) in lines[0] and key in lines[0], lines[0]
    assert re.search(problem, lines[0], flags=re.IGNORECASE), lines[0]
    assert "Traceback" not in out + err
    assert read == [], "a checkpoint was read before the model folder was checked"
    assert not (tmp_path / "out").exists()


def test_labels_that_do_not_fit_the_checkpoint_name_both(tmp_path: Path, run_cli) -> None:
    model = demo_copy(tmp_path, dataset_change=setter(_top, "labels", {"background": 0, "grey_matter": 1}))

    code, out, err = run_cli(["predict", "-i", SAMPLE, "-o", tmp_path / "out", "-m", model, "-device", "cpu"])

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "dataset.json" in lines[0] and "'labels'" in lines[0]
    assert "2 output(s)" in lines[0] and "trained with 4" in lines[0] and "fold_0/checkpoint_final.pth" in lines[0]
    assert "state_dict" not in err and "Traceback" not in out + err


def test_a_tile_too_large_for_memory_is_refused_without_pointing_to_the_cpu(tmp_path: Path, run_cli) -> None:
    model = demo_copy(tmp_path, setter(fullres, "patch_size", [4096, 4096, 4096]))

    code, out, err = run_cli(["predict", "-i", SAMPLE, "-o", tmp_path / "out", "-m", model, "-device", "cpu",
                              "--preset", "preview"])

    assert code == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "4096 x 4096 x 4096" in lines[0] and "patch_size" in lines[0]
    assert "--device cpu" not in lines[0]
    assert "Traceback" not in out + err


def test_the_demo_model_and_its_two_configurations_pass() -> None:
    dataset = json.loads((DEMO / "dataset.json").read_text())
    plans = json.loads((DEMO / "plans.json").read_text())
    validate_model_json(dataset, plans, DEMO)


def test_every_stock_test_model_passes(make_model) -> None:
    for kind in ("3d", "regions", "two_channel"):
        folder = make_model(kind)
        validate_model_json(json.loads((folder / "dataset.json").read_text()),
                            json.loads((folder / "plans.json").read_text()), folder)


def test_regions_and_ignore_labels_are_well_formed() -> None:
    check_dataset_json({"channel_names": {"0": "CT"}, "labels": {"background": 0, "whole": [1, 2], "core": 2},
                        "regions_class_order": [1, 2]}, Path("dataset.json"))
    check_dataset_json({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "ignore": 2}},
                       Path("dataset.json"))
    with pytest.raises(ModelError, match="'ignore' must have the highest value"):
        check_dataset_json({"channel_names": {"0": "CT"}, "labels": {"background": 0, "ignore": 1, "a": 2}},
                           Path("dataset.json"))


def test_a_class_outside_the_known_packages_is_left_to_the_trust_check_and_not_imported() -> None:
    plans = json.loads((DEMO / "plans.json").read_text())
    changed = copy.deepcopy(plans)
    fullres(changed)["architecture"]["network_class_name"] = "tilewise_never_imported_module.Net"
    check_plans_json(changed, Path("plans.json"), 1, trust=False)  # check_plans refuses it later, before importing
    with pytest.raises(ModelError, match="cannot be imported|names nothing"):
        check_plans_json(changed, Path("plans.json"), 1, trust=True)

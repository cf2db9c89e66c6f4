"""Trust covers the whole model folder: without --trust-model, plans.json may name classes of the known network
packages only (refused before anything is imported), and checkpoints may hold only what nnUNetv2_train writes."""
from __future__ import annotations

import json
import shutil
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import model_factory
from tilewise.engine import ModelBundle, ModelError, UntrustedCheckpointError
from tilewise.engine.model.checkpoint import SAFE_GLOBALS, UntrustedPlansError, load_checkpoint

ERROR_PREFIX = "tilewise: error: "
SMALL = (24, 28, 32)
ZEN = "Beautiful is better than ugly"


# ---- helpers ----------------------------------------------------------------------------------------------------


def predict(tmp: Path, model: Path, *extra: str) -> tuple[list, Path]:
    source = model_factory.make_case(tmp / "in" / "ct_0000.nii.gz", "3d", shape=SMALL)
    out = tmp / "out"
    return ["predict", "-i", source, "-o", out, "-m", model, "--preset", "preview", "-device", "cpu", *extra], out


def written(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def model_naming(ct_model: Path, folder: Path, network: str | None = None, plans_changes: dict | None = None,
                 **arch_kwargs: str) -> Path:
    """A copy of ``ct_model`` whose plans.json names ``network`` as the architecture, sets ``arch_kwargs`` (listed
    in _kw_requires_import) and applies ``plans_changes`` to every configuration."""
    model = folder / "model"
    shutil.copytree(ct_model, model)
    plans = json.loads((model / "plans.json").read_text())
    for configuration in plans["configurations"].values():
        configuration.update(plans_changes or {})
        architecture = configuration.get("architecture")
        if architecture is None:
            continue
        if network is not None:
            architecture["network_class_name"] = network
        for key, value in arch_kwargs.items():
            architecture["arch_kwargs"][key] = value
            if key not in architecture["_kw_requires_import"]:
                architecture["_kw_requires_import"].append(key)
    (model / "plans.json").write_text(json.dumps(plans, indent=2))
    return model


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A module on sys.path that writes a marker file when imported and defines a working UNet and nonlinearity."""
    name = f"tilewise_marker_{uuid.uuid4().hex[:12]}"
    code, flag = tmp_path / "code", tmp_path / "imported.txt"
    code.mkdir()
    (code / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(flag)!r}).write_text('imported')\n"
        "import torch\n"
        "from dynamic_network_architectures.architectures.unet import PlainConvUNet\n\n\n"
        "class MarkerUNet(PlainConvUNet):\n    pass\n\n\n"
        "class MarkerLeakyReLU(torch.nn.LeakyReLU):\n    pass\n")
    monkeypatch.syspath_prepend(str(code))
    yield name, flag
    sys.modules.pop(name, None)


def assert_refused_in_one_line(code: int, out: str, err: str, *culprits: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    for culprit in (*culprits, "plans.json", "--trust-model"):
        assert culprit in lines[0], lines[0]
    assert "Traceback" not in err + out
    return lines[0]


# ---- plans.json ---------------------------------------------------------------------------------------------------

def test_network_class_outside_known_packages_is_refused_before_import(tmp_path: Path, ct_model: Path,
                                                                      run_cli) -> None:
    """The reported case: 'this.NotANetwork' imported the module 'this' (printing the Zen of Python)."""
    this_was_loaded = "this" in sys.modules
    model = model_naming(ct_model, tmp_path, network="this.NotANetwork")
    args, out = predict(tmp_path, model)

    code, stdout, err = run_cli(args)

    assert_refused_in_one_line(code, stdout, err, str(model / "plans.json"), "'this.NotANetwork'")
    assert ZEN not in stdout + err
    assert this_was_loaded or "this" not in sys.modules
    assert written(out) == []


def test_marker_module_as_network_is_not_imported_without_trust(tmp_path: Path, ct_model: Path, marker,
                                                               run_cli) -> None:
    name, flag = marker
    model = model_naming(ct_model, tmp_path, network=f"{name}.MarkerUNet")
    args, out = predict(tmp_path, model)

    code, stdout, err = run_cli(args)

    assert_refused_in_one_line(code, stdout, err, f"'{name}.MarkerUNet'", "network class")
    assert name not in sys.modules and not flag.exists(), "the untrusted module was imported"
    assert written(out) == []


def test_req_import_outside_known_packages_is_refused_before_import(tmp_path: Path, ct_model: Path, marker,
                                                                   run_cli) -> None:
    name, flag = marker
    model = model_naming(ct_model, tmp_path, nonlin=f"{name}.MarkerLeakyReLU")
    args, out = predict(tmp_path, model)

    code, stdout, err = run_cli(args)

    assert_refused_in_one_line(code, stdout, err, f"'{name}.MarkerLeakyReLU'", "'nonlin'")
    assert name not in sys.modules and not flag.exists(), "the untrusted module was imported"
    assert written(out) == []


def test_trust_model_imports_what_plans_json_names(tmp_path: Path, ct_model: Path, marker, run_cli) -> None:
    """With --trust-model the folder loads as nnU-Net would load it: the module is imported, the network runs."""
    name, flag = marker
    model = model_naming(ct_model, tmp_path / "custom", network=f"{name}.MarkerUNet",
                         nonlin=f"{name}.MarkerLeakyReLU")
    args, out = predict(tmp_path / "custom", model, "--trust-model")

    code, _, err = run_cli(args)

    assert code == 0, err
    assert name in sys.modules and flag.exists()
    stock_args, stock_out = predict(tmp_path / "stock", ct_model)
    assert run_cli(stock_args)[0] == 0
    import SimpleITK as sitk

    [custom_file], [stock_file] = written(out), written(stock_out)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(custom_file))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(stock_file))))


@pytest.mark.filterwarnings("ignore:Network class:UserWarning")  # nnunetv2 warns before it searches
def test_trusted_missing_class_is_a_different_error(tmp_path: Path, ct_model: Path, capsys) -> None:
    model = model_naming(ct_model, tmp_path, network="this.NotANetwork")
    with pytest.raises(UntrustedPlansError):
        ModelBundle.load(model)
    with pytest.raises(ModelError) as caught:  # the schema check finds it, before any checkpoint or network
        ModelBundle.load(model, trust=True)
    assert not isinstance(caught.value, UntrustedCheckpointError)
    assert "network_class_name" in str(caught.value) and "names nothing" in str(caught.value)
    assert "plans.json" in str(caught.value) and "--trust-model" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_path_through_a_known_package_to_elsewhere_is_refused(tmp_path: Path, ct_model: Path) -> None:
    """'torch.nn.modules.module.torch.load' starts in torch.nn but is torch.load: what is found must be in there too."""
    model = model_naming(ct_model, tmp_path, network="torch.nn.modules.module.torch.load")
    with pytest.raises(UntrustedPlansError) as caught:  # the string is in torch.nn: locating it (schema) tells
        ModelBundle.load(model)
    assert "torch.serialization" in str(caught.value) and "--trust-model" in str(caught.value)


@pytest.mark.parametrize("key, value, home", [("preprocessor_name", "load_pickle", "batchgenerators"),
                                             ("resampling_fn_data", "resize", "skimage")])
def test_named_lookup_must_find_something_of_nnunetv2(tmp_path: Path, ct_model: Path, key: str, value: str,
                                                      home: str) -> None:
    """nnunetv2 finds these names among its own modules, which also hold helpers imported from elsewhere."""
    model = model_naming(ct_model, tmp_path, plans_changes={key: value})
    with pytest.raises(UntrustedPlansError) as caught:
        ModelBundle.load(model)
    assert f"{key} '{value}'" in str(caught.value) and home in str(caught.value)
    assert ModelBundle.load(model, trust=True).trusted


def test_name_that_is_not_a_name_is_a_model_error(tmp_path: Path, ct_model: Path) -> None:
    model = model_naming(ct_model, tmp_path, plans_changes={"preprocessor_name": "os.system"})
    with pytest.raises(ModelError) as caught:
        ModelBundle.load(model, trust=True)
    assert "preprocessor_name" in str(caught.value) and "'os.system'" in str(caught.value)


def test_req_import_missing_from_arch_kwargs_is_a_model_error(tmp_path: Path, ct_model: Path) -> None:
    model = model_naming(ct_model, tmp_path)
    plans = json.loads((model / "plans.json").read_text())
    for configuration in plans["configurations"].values():
        configuration.get("architecture", {}).get("_kw_requires_import", []).append("no_such_op")
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError) as caught:
        ModelBundle.load(model)
    assert "'no_such_op'" in str(caught.value) and "plans.json" in str(caught.value)


@pytest.mark.parametrize("kind", model_factory.MODEL_KINDS)
def test_every_stock_model_kind_loads_without_trust(make_model, kind: str) -> None:
    bundle = ModelBundle.load(make_model(kind))
    assert not bundle.trusted
    assert len(bundle.build_networks()) == len(bundle.folds)


# ---- checkpoints ----------------------------------------------------------------------------------------------------

def _numpy_scalar_types(value, found: set) -> set:
    if isinstance(value, dict):
        for item in value.values():
            _numpy_scalar_types(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _numpy_scalar_types(item, found)
    elif isinstance(value, (np.generic, np.ndarray, np.dtype)):
        found.add(type(value))
    return found


def nnunet_trainer_checkpoint(model: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint saved by nnUNetTrainer itself after one real training and validation step on random data."""
    from torch.nn.functional import interpolate

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(work / variable))
    plans, dataset_json = (json.loads((model / f).read_text()) for f in ("plans.json", "dataset.json"))
    configuration = load_checkpoint(model / "fold_0" / "checkpoint_final.pth")["init_args"]["configuration"]
    plans["continue_training"] = False  # what nnUNetv2_train adds
    trainer = nnUNetTrainer(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
    preprocessed = work / "nnUNet_preprocessed" / plans["dataset_name"] / trainer.configuration_manager.data_identifier
    preprocessed.mkdir(parents=True)
    (preprocessed / "case.b2nd").write_bytes(b"")  # initialize() infers the dataset format from the file names
    trainer.initialize()
    patch, generator = trainer.configuration_manager.patch_size, torch.Generator().manual_seed(0)

    def batch() -> dict:
        target = torch.randint(0, len(trainer.label_manager.all_labels), (2, 1, *patch), generator=generator).float()
        scales = trainer._get_deep_supervision_scales()
        return {"data": torch.randn(2, trainer.num_input_channels, *patch, generator=generator),
                "target": [interpolate(target, size=[round(p * s) for p, s in zip(patch, scale)]) for scale in scales]}

    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    trainer.on_train_epoch_end([trainer.train_step(batch())])
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        trainer.on_validation_epoch_end([trainer.validation_step(batch())])
    trainer.on_epoch_end()
    trainer.save_checkpoint(str(work / "checkpoint_final.pth"))
    return work / "checkpoint_final.pth"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_checkpoint_saved_by_nnunet_trainer_loads_without_trust(tmp_path: Path, ct_model: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = nnunet_trainer_checkpoint(ct_model, tmp_path / "train", monkeypatch)
    checkpoint = load_checkpoint(path)
    assert set(checkpoint) >= {"network_weights", "optimizer_state", "logging", "_best_ema", "init_args"}
    assert isinstance(checkpoint["init_args"]["device"], torch.device)
    assert _numpy_scalar_types(checkpoint, set()) <= {np.float32, np.float64}  # what the allow-list is built on
    model = tmp_path / "model"
    shutil.copytree(ct_model, model)
    shutil.copy(path, model / "fold_0" / "checkpoint_final.pth")
    assert len(ModelBundle.load(model).build_networks()) == 1


def test_allow_list_is_exactly_what_real_checkpoints_hold() -> None:
    from numpy._core.multiarray import scalar

    objects = {entry[0] if isinstance(entry, tuple) else entry for entry in SAFE_GLOBALS}
    assert objects == {np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64)), torch.device, scalar}


@pytest.mark.parametrize("value", [np.dtype("complex128"), np.float16(1.5), np.int64(3), np.complex128(1j),
                                   np.zeros(2)], ids=["complex128-dtype", "float16", "int64", "complex128", "array"])
def test_numpy_type_real_checkpoints_never_hold_needs_trust(tmp_path: Path, ct_model: Path, value) -> None:
    model = tmp_path / "model"
    shutil.copytree(ct_model, model)
    path = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = load_checkpoint(path)
    checkpoint["logging"]["extra"] = [value]
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedCheckpointError) as caught:
        ModelBundle.load(model)
    assert str(path) in str(caught.value) and "--trust-model" in str(caught.value)
    assert "numpy" in str(caught.value)
    assert ModelBundle.load(model, trust=True).folds == ["0"]


@pytest.mark.skipif(torch.__version__ < (2, 6), reason="torch < 2.6 cannot allow a global under a second name")
def test_checkpoint_written_with_numpy_1_loads(tmp_path: Path, ct_model: Path) -> None:
    """numpy 1.x names the scalar rebuilder numpy.core.multiarray.scalar."""
    model = tmp_path / "model"
    shutil.copytree(ct_model, model)
    path = model / "fold_0" / "checkpoint_final.pth"
    original = path.with_suffix(".numpy2")
    path.rename(original)
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            target.writestr(info, data)
    original.unlink()
    checkpoint = load_checkpoint(path)
    assert isinstance(checkpoint["_best_ema"], np.floating)

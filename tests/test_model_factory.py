"""The model factory builds real nnU-Net v2 model folders that nnU-Net itself loads and predicts with."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

try:  # the same module object conftest.py imports (tests/ is put on sys.path there)
    import model_factory as mf
except ImportError:  # tests/ imported as a package without that conftest
    from . import model_factory as mf


@pytest.fixture(scope="session")
def factory_root(request, tmp_path_factory):
    """Share the session's model folder with the other tests when conftest.py provides one."""
    try:
        return request.getfixturevalue("model_root")
    except pytest.FixtureLookupError:
        return tmp_path_factory.mktemp("tilewise_models")


@pytest.fixture(scope="session")
def cases_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tilewise_cases")


def _case_shape(kind):
    return {"aniso": (12, 48, 56), "transposed": (40, 48, 14)}.get(kind, (40, 48, 56))


def _load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _numpy_scalar_allow_list():
    return [np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar,
            np.dtype, type(np.dtype(np.float64))]


@pytest.mark.parametrize("kind", mf.MODEL_KINDS)
def test_kind_loads_and_predicts_every_label(kind, factory_root, cases_dir):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model_dir = mf.make_model(factory_root, kind)
    assert (model_dir / "dataset.json").is_file() and (model_dir / "plans.json").is_file()
    ckpt_path = model_dir / "fold_0" / "checkpoint_final.pth"
    assert ckpt_path.is_file()
    plans = json.loads((model_dir / "plans.json").read_text())
    ckpt = _load_checkpoint(ckpt_path)
    configuration = ckpt["init_args"]["configuration"]
    assert model_dir.name == f"nnUNetTrainer__{plans['plans_name']}__{configuration}"

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                allow_tqdm=False, verbose=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), (0,))
    assert predictor.trainer_name == "nnUNetTrainer"
    cm = predictor.configuration_manager

    expected_config = {"2d": "2d", "lowres": "3d_lowres"}.get(kind, "3d_fullres")
    assert configuration == expected_config
    if kind == "lowres":
        # honestly planned by nnU-Net: the plans hold the whole cascade
        cfgs = plans["configurations"]
        assert cfgs["3d_cascade_fullres"] == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
        assert cfgs["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    if kind == "resenc":
        assert cm.network_arch_class_name.endswith("ResidualEncoderUNet")
        assert plans["experiment_planner_used"] == "nnUNetPlannerResEncM"
    else:
        assert cm.network_arch_class_name.endswith("PlainConvUNet")
    if kind == "two_channel":
        assert cm.normalization_schemes == ["ZScoreNormalization"] * 2
        assert len(predictor.dataset_json["channel_names"]) == 2
    if kind in ("3d", "2d", "regions", "aniso", "resenc", "lowres", "transposed"):
        assert cm.normalization_schemes == ["CTNormalization"]
    if kind == "regions":
        assert predictor.label_manager.has_regions
        assert predictor.label_manager.num_segmentation_heads == 3

    shape = _case_shape(kind)
    files = mf.case_files(cases_dir, f"case_{kind}", kind, shape=shape, seed=3)
    assert len(files) == mf.num_channels(kind)
    seg = mf.nnunet_reference(model_dir, files)
    assert seg.shape == shape
    present = set(np.unique(seg).tolist())
    for label in mf.expected_labels(kind):
        assert label in present, f"{kind}: label {label} never predicted ({present})"
        assert (seg == label).mean() > 0.01, f"{kind}: label {label} only in {(seg == label).mean():.4f}"

    if kind == "aniso":
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
        case_spacing = np.array(mf.default_spacing(kind)[::-1])[plans["transpose_forward"]]
        plan_spacing = np.array(cm.spacing)
        assert not np.allclose(case_spacing, plan_spacing)  # resampling really happens
        do_sep, axis = determine_do_sep_z_and_axis(None, case_spacing, plan_spacing)
        assert do_sep and axis == 0
    if kind == "transposed":
        # x (the last numpy axis) is the coarse one, so nnU-Net moves it to the front
        assert plans["transpose_forward"] != [0, 1, 2]
        assert plans["transpose_forward"][0] == 2
        assert plans["transpose_backward"] != plans["transpose_forward"]  # a 3-cycle: mixing them up shows
        assert cm.spacing[0] == max(cm.spacing) == pytest.approx(3.0)
        assert cm.patch_size[0] < min(cm.patch_size[1:])
    else:
        assert plans["transpose_forward"] == [0, 1, 2]


def test_transposed_default_case_geometry(factory_root, cases_dir):
    """make_case defaults to the transposed dataset's geometry (x coarse, SimpleITK spacing (3, 1, 1)); nnU-Net
    predicts every label on such a case and hands it back in the case's own (z, y, x) order."""
    files = mf.case_files(cases_dir, "case_transposed_default", "transposed", shape=(40, 48, 14), seed=11)
    img = sitk.ReadImage(str(files[0]))
    assert np.allclose(img.GetSpacing(), (3.0, 1.0, 1.0)) and mf.default_spacing("transposed") == (3.0, 1.0, 1.0)
    seg = mf.nnunet_reference(mf.make_model(factory_root, "transposed"), files, mirroring=False)
    assert seg.shape == (40, 48, 14)
    assert set(mf.expected_labels("transposed")) <= set(np.unique(seg).tolist())


def test_bench_kind_is_not_a_test_model(tmp_path):
    assert "bench" not in mf.MODEL_KINDS
    with pytest.raises(ValueError, match="make_bench_model"):
        mf.make_model(tmp_path, "bench")
    assert mf._PLANNERS["bench"]["attrs"] == {}  # nnU-Net's default network widths, unlike the test kinds
    p = mf.make_case(tmp_path / "b_0000.nii.gz", "bench", shape=(8, 9, 10))
    assert np.allclose(sitk.ReadImage(str(p)).GetSpacing(), (1.5, 1.5, 1.5))


def test_multiple_folds_differ_and_ensemble(factory_root, cases_dir):
    model_dir = mf.make_model(factory_root, "3d", folds=(0, 1), seed=1)
    w0 = _load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")["network_weights"]
    w1 = _load_checkpoint(model_dir / "fold_1" / "checkpoint_final.pth")["network_weights"]
    assert w0.keys() == w1.keys()
    diffs = [float((w0[k] - w1[k]).abs().max()) for k in w0 if w0[k].is_floating_point()]
    assert max(diffs) > 0
    rel = max(float((w0[k] - w1[k]).norm() / (w0[k].norm() + 1e-12)) for k in w0 if w0[k].is_floating_point())
    assert rel < 0.2  # "slightly" different
    files = mf.case_files(cases_dir, "case_folds", "3d", shape=(36, 40, 44), seed=5)
    seg = mf.nnunet_reference(model_dir, files, folds=(0, 1), mirroring=False)
    assert seg.shape == (36, 40, 44)
    assert set(mf.expected_labels("3d")) <= set(np.unique(seg).tolist())
    # cached: same path, files untouched
    mtime = (model_dir / "fold_1" / "checkpoint_final.pth").stat().st_mtime_ns
    assert mf.make_model(factory_root, "3d", folds=(0, 1), seed=1) == model_dir
    assert (model_dir / "fold_1" / "checkpoint_final.pth").stat().st_mtime_ns == mtime


def test_checkpoint_name_and_seed(factory_root, cases_dir):
    model_dir = mf.make_model(factory_root, "2d", seed=2, checkpoint_name="checkpoint_best.pth")
    assert (model_dir / "fold_0" / "checkpoint_best.pth").is_file()
    assert not (model_dir / "fold_0" / "checkpoint_final.pth").exists()
    other = mf.make_model(factory_root, "2d")
    assert other != model_dir
    files = mf.case_files(cases_dir, "case_best", "2d", shape=(6, 48, 56), seed=7)
    seg = mf.nnunet_reference(model_dir, files, checkpoint_name="checkpoint_best.pth", step=1.0)
    assert seg.shape == (6, 48, 56)
    assert set(mf.expected_labels("2d")) <= set(np.unique(seg).tolist())


def test_checkpoint_format_matches_nnunet(factory_root):
    model_dir = mf.make_model(factory_root, "3d")
    ckpt = _load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    assert set(ckpt) == {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                         "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}
    assert ckpt["grad_scaler_state"] is None
    assert ckpt["trainer_name"] == "nnUNetTrainer"
    assert ckpt["inference_allowed_mirroring_axes"] == (0, 1, 2)
    assert isinstance(ckpt["_best_ema"], np.float64)
    assert isinstance(ckpt["current_epoch"], int)
    assert set(ckpt["init_args"]) == {"plans", "configuration", "fold", "dataset_json", "device"}
    assert ckpt["init_args"]["device"] == torch.device("cpu")
    assert ckpt["init_args"]["plans"] == json.loads((model_dir / "plans.json").read_text())
    assert ckpt["init_args"]["dataset_json"] == json.loads((model_dir / "dataset.json").read_text())
    log = ckpt["logging"]
    for key in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses"):
        assert log[key] and all(isinstance(v, np.float64) for v in log[key])
    assert all(isinstance(v, np.float64) for per_epoch in log["dice_per_class_or_region"] for v in per_epoch)
    assert len({len(v) for v in log.values()}) == 1  # one entry per epoch everywhere
    assert {"state", "param_groups"} <= set(ckpt["optimizer_state"])
    assert (model_dir / "dataset_fingerprint.json").is_file()
    # the same network class nnU-Net builds accepts the weights strictly
    net = mf._build_network(ckpt["init_args"]["plans"], ckpt["init_args"]["dataset_json"], "3d_fullres", 0)
    net.load_state_dict(ckpt["network_weights"], strict=True)
    assert model_dir.parent.name == "Dataset901_TilewiseCT"
    info = mf.model_info(model_dir)
    assert max(info["features_per_stage"]) <= 16


def test_2d_mirroring_axes(factory_root):
    ckpt = _load_checkpoint(mf.make_model(factory_root, "2d") / "fold_0" / "checkpoint_final.pth")
    assert ckpt["inference_allowed_mirroring_axes"] == (0, 1)


def test_weights_only_needs_allow_list_and_refuses_untrusted(factory_root, tmp_path):
    import shutil

    model_dir = mf.make_model(factory_root, "3d")
    path = model_dir / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals(_numpy_scalar_allow_list()):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(ckpt["_best_ema"], np.float64)
    assert ckpt["init_args"]["device"] == torch.device("cpu")

    copy = tmp_path / model_dir.name
    shutil.copytree(model_dir, copy)
    mf.make_untrusted_checkpoint(copy, fold=0)
    bad = copy / "fold_0" / "checkpoint_final.pth"
    before = len(mf.UNTRUSTED_EXECUTIONS)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals(_numpy_scalar_allow_list() + [torch.device]):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(bad, map_location="cpu", weights_only=True)
    assert len(mf.UNTRUSTED_EXECUTIONS) == before
    # the unsafe way really runs the payload (harmlessly: it records itself)
    loaded = torch.load(bad, map_location="cpu", weights_only=False)
    assert isinstance(loaded["tilewise_payload"], mf.UntrustedPayload)
    assert len(mf.UNTRUSTED_EXECUTIONS) == before + 2
    # the original stays trusted
    assert torch.load(path, map_location="cpu", weights_only=False)["trainer_name"] == "nnUNetTrainer"


def test_cascade_model_is_a_real_cascade(factory_root):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    cascade = mf.make_cascade_model(factory_root)
    lowres = mf.make_model(factory_root, "lowres")
    assert cascade.parent == lowres.parent
    assert cascade.name.endswith("__3d_cascade_fullres")
    ckpt = _load_checkpoint(cascade / "fold_0" / "checkpoint_final.pth")
    assert ckpt["init_args"]["configuration"] == "3d_cascade_fullres"
    plans = json.loads((cascade / "plans.json").read_text())
    assert plans["configurations"]["3d_cascade_fullres"]["previous_stage"] == "3d_lowres"
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(cascade), (0,))
    assert predictor.configuration_manager.previous_stage_name == "3d_lowres"
    first = next(iter(ckpt["network_weights"].values()))
    assert first.shape[1] == 1 + 2  # image + one-hot of the two foreground labels


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_make_case_geometry(tmp_path, suffix):
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    p = mf.make_case(tmp_path / f"img{suffix}", "3d", shape=(8, 10, 12), spacing=(0.7, 0.8, 2.5),
                     direction=direction, origin=(1.0, -2.0, 3.5), seed=4)
    img = sitk.ReadImage(str(p))
    assert sitk.GetArrayViewFromImage(img).shape == (8, 10, 12)
    assert np.allclose(img.GetSpacing(), (0.7, 0.8, 2.5))
    assert np.allclose(img.GetDirection(), direction)
    assert np.allclose(img.GetOrigin(), (1.0, -2.0, 3.5))
    arr = sitk.GetArrayFromImage(img)
    assert arr.min() <= -900 and arr.max() > 0  # air around a body


def test_case_files_and_mr_content(tmp_path):
    files = mf.case_files(tmp_path, "mr", "two_channel", shape=(16, 20, 24), seed=1)
    assert [f.name for f in files] == ["mr_0000.nii.gz", "mr_0001.nii.gz"]
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in files)
    assert np.allclose(sitk.ReadImage(str(files[0])).GetSpacing(), mf.default_spacing("two_channel"))
    assert (a == 0).any() and (a > 0).any()
    assert ((a > 0) == (b > 0)).all()  # same anatomy, different contrast
    assert not np.allclose(a, b)
    assert [f.name for f in mf.case_files(tmp_path, "ct", "3d", shape=(4, 5, 6))] == ["ct_0000.nii.gz"]
    with pytest.raises(ValueError):
        mf.make_model(tmp_path, "4d")

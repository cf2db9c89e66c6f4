"""Stand-in TotalSegmentator weight folders for tests and benchmarks (nothing is downloaded).

TotalSegmentator's weights cannot be fetched here, so this module builds folders with the names, trainers, label sets
and spacings TotalSegmentator's code looks for, under a weights folder that ``TOTALSEG_WEIGHTS_PATH`` points to.
TotalSegmentator then finds every folder it needs and downloads nothing; its own Python API runs on them as on the
real weights.

* names: ``<weights>/Dataset291_TotalSegmentator_part1_organs_1559subj/nnUNetTrainerNoMirroring__nnUNetPlans__
  3d_fullres`` and so on, the folder names from TotalSegmentator's ``TASK_ID_WEIGHTS_CONFIGS`` and the trainers from
  its ``TASK_CONFIGS`` (and the crop models' trainers from its Python API);
* plans: nnU-Net's own fingerprint extractor and ``ExperimentPlanner`` on five small synthetic cases at the model's
  spacing (1.5 mm for ``total``'s five parts and ``total_mr``'s two, 3 mm for ``--fast``, 6 mm for the crop model,
  1 x 1 x 1.5 mm for the ``liver_vessels`` sub-task), with the planner's knobs set for tiny networks (4 to 16
  features) as in :mod:`model_factory`; the parts of one spacing share one planning, as parts trained on the same
  images do;
* labels: TotalSegmentator's class maps (``class_map_5_parts`` for the parts, ``class_map['total']`` for the 3 mm
  and 6 mm models, ``class_map_parts_mr``, ``class_map['liver_vessels']``);
* weights: seeded random, with decisive heads whose biases are balanced on a sample case so that many labels are
  predicted on a mostly background image (80 % for a part, 50 % for the whole-body models: the parts' labels then
  overlap only in places, so the order TotalSegmentator merges them in matters); the 6 mm model's ``liver`` is made
  rare, so that cropping to it (``--roi_subset liver``, the ``liver_vessels`` task) crops to a part of the image.

:func:`make_ct` writes the CT-like test image (and :func:`make_mr` an MR-like one) the tests run both tools on.

For benchmarks, ``full_size=True`` (:func:`full_size_standins`) plans the same models with nnU-Net's default network
(features 32 -> 320) and memory target on planning cases of CT size (about 350 x 250 x 250 voxels at 1.5 mm): the
forward passes then cost what a real TotalSegmentator model's do (the weights stay random: time only). The patch
sizes are nnU-Net's planner's choice for such data, not necessarily those of TotalSegmentator's released plans.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from multiprocessing.pool import ThreadPool
from pathlib import Path
from types import SimpleNamespace

import model_factory as mf
import numpy as np
import SimpleITK as sitk
import torch

_VERSION = "1"

TEST_SHAPE = (40, 48, 48)
"""numpy (z, y, x) shape of the test images."""
TEST_SPACING = (1.25, 1.25, 2.0)
"""SimpleITK (x, y, z) spacing of the test images: 60 x 60 x 80 mm."""

_GROUPS = {
    # key: family, channel name, SimpleITK (x, y, z) spacing, numpy (z, y, x) shape of the planning cases
    "ct_1.5mm": ("ct", "CT", (1.5, 1.5, 1.5), (32, 28, 28)),
    "ct_3mm": ("ct", "CT", (3.0, 3.0, 3.0), (18, 14, 14)),
    "ct_6mm": ("ct", "CT", (6.0, 6.0, 6.0), (10, 8, 8)),
    "mr_1.5mm": ("mr", "MRI", (1.5, 1.5, 1.5), (32, 28, 28)),
    "ct_liver_vessels": ("ct", "CT", (1.0, 1.0, 1.5), (24, 28, 28)),
}

_NO_MIRRORING = "nnUNetTrainerNoMirroring"
_MODELS = {
    # task id: (planning group, labels (TotalSegmentator's class map, value -> name), trainer)
    291: ("ct_1.5mm", ("parts", "class_map_part_organs"), _NO_MIRRORING),
    292: ("ct_1.5mm", ("parts", "class_map_part_vertebrae"), _NO_MIRRORING),
    293: ("ct_1.5mm", ("parts", "class_map_part_cardiac"), _NO_MIRRORING),
    294: ("ct_1.5mm", ("parts", "class_map_part_muscles"), _NO_MIRRORING),
    295: ("ct_1.5mm", ("parts", "class_map_part_ribs"), _NO_MIRRORING),
    297: ("ct_3mm", ("task", "total"), "nnUNetTrainer_4000epochs_NoMirroring"),
    298: ("ct_6mm", ("task", "total"), "nnUNetTrainer_4000epochs_NoMirroring"),
    850: ("mr_1.5mm", ("mr_parts", "class_map_part_organs"), "nnUNetTrainer_2000epochs_NoMirroring"),
    851: ("mr_1.5mm", ("mr_parts", "class_map_part_muscles"), "nnUNetTrainer_2000epochs_NoMirroring"),
    8: ("ct_liver_vessels", ("task", "liver_vessels"), "nnUNetTrainer"),
}
RARE_IN_CROP_MODEL = "liver"
"""The structure the 6 mm crop model predicts in a small region of the test images only (see the docstring)."""


def _labels(source: tuple[str, str]) -> dict[int, str]:
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts, class_map_parts_mr

    kind, name = source
    maps = {"parts": class_map_5_parts, "mr_parts": class_map_parts_mr, "task": class_map}[kind]
    return {int(k): v for k, v in maps[name].items()}


def _folder_name(task_id: int) -> str:
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    return TASK_ID_WEIGHTS_CONFIGS[task_id]["foldername"]


def _write_image(array: np.ndarray, spacing, path: Path, direction: tuple[float, ...] | None = None) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


PERMUTED = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
"""A SimpleITK direction whose voxel axes are not the patient's (a sagittal-like acquisition): TotalSegmentator's
reorientation to RAS then permutes axes, not only flips them."""


FULL_SIZE_SCALE = 11.0
"""Planning cases of full-size stand-ins are the tiny ones' shapes times this (32 x 28 x 28 -> 352 x 308 x 308 at
1.5 mm: a chest-abdomen-pelvis CT)."""


def _plan(root: Path, key: str, full_size: bool = False) -> Path:
    """nnU-Net's fingerprint and plans for one planning group (cached under ``root``): tiny networks, or with
    ``full_size`` nnU-Net's default network and memory target on CT-sized planning cases."""
    family, channel, spacing, shape = _GROUPS[key]
    if full_size:
        shape = tuple(round(n * FULL_SIZE_SCALE) for n in shape)
    final = root / f"_planned_v{_VERSION}" / (f"{key}-full" if full_size else key)
    name = f"Dataset{950 + list(_GROUPS).index(key)}_Standin{key.replace('.', '').replace('_', '')}"

    def build(tmp: Path) -> None:
        raw, pre = tmp / "nnUNet_raw", tmp / "nnUNet_preprocessed"
        images, labels = raw / name / "imagesTr", raw / name / "labelsTr"
        for i in range(5):
            case_shape = tuple(round(n * f) for n, f in zip(shape, (1 + 0.05 * (i - 2), 1 - 0.04 * (i - 2), 1)))
            channels, seg = mf._synthesize(family, case_shape, seed=3000 + 31 * i + len(key))
            _write_image(channels[0], spacing, images / f"case_{i:03d}_0000.nii.gz")
            _write_image(np.minimum(seg, 2), spacing, labels / f"case_{i:03d}.nii.gz")
        mf._write_json({"channel_names": {"0": channel}, "labels": {"background": 0, "a": 1, "b": 2},
                        "numTraining": 5, "file_ending": ".nii.gz"}, raw / name / "dataset.json")
        from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor as fe_mod
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
        from nnunetv2.utilities import utils as nnunet_utils

        with mf._nnunet_env(raw, pre, tmp / "results"), mf._quiet(), \
                mf._patched_attr(fe_mod, "multiprocessing", mf._InlineMultiprocessing), \
                mf._patched_attr(nnunet_utils, "Pool", ThreadPool):
            extractor = fe_mod.DatasetFingerprintExtractor(name, num_processes=1, verbose=False)
            extractor.show_progress_bar = False
            extractor.num_foreground_voxels_for_intensitystats = 1e5
            extractor.run(overwrite_existing=True)
            planner = ExperimentPlanner(name)
            for attr, value in ({} if full_size else mf._PLANNERS["default"]["attrs"]).items():
                setattr(planner, attr, value)
            planner.plan_experiment()
        shutil.copytree(pre / name, tmp / "planned")
        shutil.copy(images / "case_000_0000.nii.gz", tmp / "planned" / "calibration_0000.nii.gz")

    with mf._lock:
        return mf._atomic_build(final, build) / "planned"


def _balance(logits: torch.Tensor, background: float, samples: int = 4096, steps: int = 120) -> torch.Tensor:
    """Per-label bias offsets so that background wins about ``background`` of the sample and every other label a
    share of the rest (as ``model_factory._balance_bias``, on a seeded subset of the voxels: 118 labels over a whole
    patch cost seconds per step)."""
    flat = logits.reshape(logits.shape[0], -1)
    pick = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(0))[:samples]
    voxels = np.ascontiguousarray(flat[:, pick].T.numpy(), dtype=np.float32)  # (samples, labels)
    count = voxels.shape[1]
    target = np.full(count, (1.0 - background) / (count - 1))
    target[0] = background
    bias = -np.median(voxels, axis=0)
    scale = float(voxels.std())
    for _ in range(steps):
        share = np.bincount((voxels + bias).argmax(1), minlength=count) / voxels.shape[0]
        if abs(share[0] - background) < 0.05 and share[1:].min() > 0.3 * target[1]:
            break
        bias = bias + 0.05 * scale * (np.log(target) - np.log(share + 1e-3))
    return torch.from_numpy(bias)


def _heads_for(plans: dict, dataset_json: dict, planned: Path, seed: int, organ: int | None,
               background: float) -> dict:
    """Seeded random weights with decisive heads, biased so that many labels are predicted on the calibration case;
    label ``organ``, when given, is biased down until it wins nowhere the calibration case shows air (its lowest
    intensity): on the test images it is then predicted in one small region, so that cropping to it crops."""
    pm, cm, _, _ = mf._managers(plans, dataset_json, "3d_fullres")
    with mf._quiet():
        data, _, _ = cm.preprocessor_class(verbose=False).run_case([str(planned / "calibration_0000.nii.gz")], None,
                                                                   pm, cm, dataset_json)
    patch = tuple(cm.patch_size)
    padded = np.zeros((1, *[max(a, b) for a, b in zip(data.shape[1:], patch)]), np.float32)
    padded[(slice(None), *[slice(0, n) for n in data.shape[1:]])] = data
    sample = torch.from_numpy(padded[(slice(None), *[slice(0, p) for p in patch])])[None]
    net = mf._build_network(plans, dataset_json, "3d_fullres", seed)
    with torch.no_grad():
        for layer in mf._seg_layers(net):
            layer.weight.mul_(mf._SEG_SCALE)
            layer.bias.mul_(mf._SEG_SCALE)
    with mf._inference_mode_net(net):
        logits = net(sample)
    count = logits.shape[1]
    offset = _balance(logits[0], background).to(torch.float32)
    if organ is not None:  # the organ never wins in air (the lowest intensity), only inside the body
        balanced = logits[0].reshape(count, -1) + offset[:, None]
        lead = balanced[organ] - torch.cat([balanced[:organ], balanced[organ + 1:]]).max(0).values
        air = torch.from_numpy(sample[0, 0].numpy() <= sample.min().item() + 1e-3).reshape(-1)
        offset[organ] -= float(lead[air].max()) + 0.5
    with torch.no_grad():
        for layer in mf._seg_layers(net):
            if layer.weight.shape[0] == offset.numel():
                layer.bias.add_(offset)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _make_model(weights: Path, root: Path, task_id: int, full_size: bool = False) -> Path:
    group, label_source, trainer = _MODELS[task_id]
    planned = _plan(root, group, full_size)
    dataset_name = _folder_name(task_id)
    folder = weights / dataset_name / f"{trainer}__nnUNetPlans__3d_fullres"
    if folder.is_dir():
        return folder
    labels = _labels(label_source)
    plans = json.loads((planned / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = dataset_name
    dataset_json = {"channel_names": {"0": _GROUPS[group][1]},
                    "labels": {"background": 0, **{name: value for value, name in sorted(labels.items())}},
                    "numTraining": 5, "file_ending": ".nii.gz", "name": dataset_name.split("_", 1)[1]}
    rare = next((v for v, n in labels.items() if n == RARE_IN_CROP_MODEL), None) if task_id == 298 else None
    background = 0.8 if len(labels) < 60 else 0.5  # a part's structures are a fraction of the image
    net_weights = _heads_for(plans, dataset_json, planned, 100 + task_id, rare, background)
    _, cm, lm, _ = mf._managers(plans, dataset_json, "3d_fullres")
    checkpoint = mf._checkpoint(net_weights, plans, dataset_json, "3d_fullres", 0, lm, len(cm.patch_size), task_id)
    checkpoint["trainer_name"] = trainer
    checkpoint["inference_allowed_mirroring_axes"] = None if "NoMirroring" in trainer else (0, 1, 2)
    weights.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task_id}.", dir=weights))
    try:
        (tmp / "fold_0").mkdir()
        mf._write_json(dataset_json, tmp / "dataset.json")
        mf._write_json(plans, tmp / "plans.json")
        shutil.copy(planned / "dataset_fingerprint.json", tmp / "dataset_fingerprint.json")
        torch.save(checkpoint, tmp / "fold_0" / "checkpoint_final.pth")
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def make_weights(weights: Path, root: Path, task_ids: tuple[int, ...] | None = None, full_size: bool = False) -> Path:
    """The stand-in folders of ``task_ids`` (default: all of them) under ``weights``; plannings are
    cached under ``root``. Returns ``weights`` (what ``TOTALSEG_WEIGHTS_PATH`` should name)."""
    weights.mkdir(parents=True, exist_ok=True)
    for task_id in task_ids or tuple(_MODELS):
        _make_model(weights, root, task_id, full_size)
    return weights


def make_ct(path: Path, seed: int = 7, shape: tuple[int, int, int] = TEST_SHAPE,
            spacing: tuple[float, float, float] = TEST_SPACING, direction: tuple[float, ...] | None = None) -> Path:
    """A CT-like int16 image (air around a body with organ-like blobs); identity direction by default (SimpleITK's
    LPS, so TotalSegmentator's reorientation to RAS flips two axes), or ``direction``."""
    channels, _ = mf._synthesize("ct", shape, seed)
    return _write_image(channels[0], spacing, path, direction)


def make_mr(path: Path, seed: int = 8, shape: tuple[int, int, int] = TEST_SHAPE,
            spacing: tuple[float, float, float] = TEST_SPACING) -> Path:
    """An MR-like float32 image (background exactly 0)."""
    channels, _ = mf._synthesize("mr", shape, seed)
    return _write_image(channels[0], spacing, path)


def settings_home(home: Path) -> Path:
    """A TotalSegmentator home folder (``TOTALSEG_HOME_DIR``) whose settings send no usage statistics and whose
    disclaimer was shown: its runs then make no network call."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"totalseg_id": "totalseg_tilewise_tests", "send_usage_stats": False,
                                                  "prediction_counter": 0, "statistics_disclaimer_shown": True}))
    return home


def standins(root: Path) -> SimpleNamespace:
    """Everything a test needs under ``root`` (built once, reused when already there): ``weights`` (all stand-in
    models), ``home`` (:func:`settings_home`), ``ct``, ``mr`` and ``ct_permuted`` (the test images)."""
    return SimpleNamespace(weights=make_weights(root / "weights", root / "plans"),
                           home=settings_home(root / "home"), ct=make_ct(root / "ct.nii.gz"),
                           mr=make_mr(root / "mr.nii.gz"), ct_permuted=make_ct(root / "ct_permuted.nii.gz",
                                                                                direction=PERMUTED))


def full_size_standins(root: Path, task_ids: tuple[int, ...] = (291, 292, 293, 294, 295, 297)) -> SimpleNamespace:
    """Full-size stand-ins (see the module's docstring) of ``task_ids`` (default: ``total`` and ``total --fast``) under
    ``root / "weights"``, with a settings home: ``weights`` and ``home`` as :func:`standins` gives them."""
    return SimpleNamespace(weights=make_weights(root / "weights", root / "plans", task_ids, full_size=True),
                           home=settings_home(root / "home"))


__all__ = ["FULL_SIZE_SCALE", "PERMUTED", "RARE_IN_CROP_MODEL", "TEST_SHAPE", "TEST_SPACING", "full_size_standins",
           "make_ct", "make_mr", "make_weights", "settings_home", "standins"]

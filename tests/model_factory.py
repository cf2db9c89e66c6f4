"""Real nnU-Net v2 trained-model folders for tests, built from tiny synthetic datasets.

Everything that nnU-Net decides is decided by nnU-Net itself: the dataset fingerprint comes from
``DatasetFingerprintExtractor``, the plans from ``ExperimentPlanner`` / ``nnUNetPlannerResEncM``, the network from
``nnUNetTrainer.build_network_architecture``.  The factory only

* writes small synthetic raw datasets (``imagesTr`` / ``labelsTr`` / ``dataset.json``),
* makes the planner plan *tiny* networks (base features 4, at most 16 features per stage, fewer convolutions) by
  setting the planner's own knobs before ``plan_experiment`` runs,
* initialises the network with seeded random weights, scales the segmentation heads so that predictions are decisive
  and shifts their biases so that every label is predicted in meaningful amounts on a sample case,
* writes checkpoints in the exact format of ``nnUNetTrainer.save_checkpoint`` (numpy float64 scalars in the logging,
  ``torch.device`` in ``init_args``), so loading them needs ``weights_only=False`` or an allow-list.

The folder layout is the one ``nnUNetv2_train`` leaves::

    <results>/Dataset901_TilewiseCT/nnUNetTrainer__nnUNetPlans__3d_fullres/
        dataset.json  plans.json  dataset_fingerprint.json
        fold_0/checkpoint_final.pth  fold_0/debug.json

Builds are cached on disk under ``root`` (per kind / folds / seed / checkpoint name; the planning per dataset), so a
session-scoped fixture may call :func:`make_model` as often as it likes.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
from copy import deepcopy
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

__all__ = [
    "MODEL_KINDS",
    "make_model",
    "make_cascade_model",
    "make_bench_model",
    "make_case",
    "case_files",
    "make_untrusted_checkpoint",
    "nnunet_reference",
    "nnunet_cascade_reference",
    "model_info",
    "default_spacing",
    "num_channels",
    "expected_labels",
    "UntrustedPayload",
    "UNTRUSTED_EXECUTIONS",
]

MODEL_KINDS = ("3d", "2d", "two_channel", "regions", "aniso", "resenc", "lowres", "transposed")

# --------------------------------------------------------------------------------------------------------------------
# dataset / kind specifications
# --------------------------------------------------------------------------------------------------------------------

_CT_SHAPES = [(28, 36, 36), (32, 40, 40), (30, 38, 42), (34, 40, 38), (32, 36, 40)]
_CT_INPLANE = [1.0, 0.9, 1.1, 1.0, 0.95]

_DATASETS = {
    "ct": dict(
        id=901, name="Dataset901_TilewiseCT", family="ct",
        channel_names={"0": "CT"},
        labels={"background": 0, "liver": 1, "tumour": 2},
        cases=[(s, (p, p, 1.5)) for s, p in zip(_CT_SHAPES, _CT_INPLANE)],
    ),
    "mr": dict(
        id=902, name="Dataset902_TilewiseMR", family="mr",
        channel_names={"0": "T1", "1": "T2"},
        labels={"background": 0, "edema": 1, "lesion": 2},
        cases=[((32, 36, 40), (1.0, 1.0, 1.0)), ((30, 38, 38), (1.0, 1.0, 1.0)), ((34, 36, 42), (1.0, 1.0, 1.0)),
               ((32, 40, 36), (1.0, 1.0, 1.0)), ((30, 36, 40), (1.0, 1.0, 1.0))],
    ),
    "regions": dict(
        id=903, name="Dataset903_TilewiseRegions", family="ct",
        channel_names={"0": "CT"},
        labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]},
        regions_class_order=[1, 2, 3],
        cases=[(s, (p, p, 1.5)) for s, p in zip(_CT_SHAPES, _CT_INPLANE)],
    ),
    "aniso": dict(
        id=904, name="Dataset904_TilewiseAniso", family="ct",
        channel_names={"0": "CT"},
        labels={"background": 0, "liver": 1, "tumour": 2},
        # numpy (z, y, x) shapes, SimpleITK (x, y, z) spacings: 4 mm slices, varying in-plane spacing
        cases=[((10, 40, 40), (0.8, 0.8, 4.0)), ((11, 44, 40), (0.9, 0.9, 4.0)), ((9, 38, 42), (1.0, 1.0, 4.0)),
               ((10, 42, 44), (1.1, 1.1, 4.0)), ((12, 40, 40), (1.2, 1.2, 4.0))],
    ),
    "lowres": dict(
        id=905, name="Dataset905_TilewiseLowres", family="ct",
        channel_names={"0": "CT"},
        labels={"background": 0, "liver": 1, "tumour": 2},
        cases=[((48, 64, 64), (1.0, 1.0, 1.0)), ((52, 60, 64), (1.0, 1.0, 1.0)), ((48, 64, 60), (1.0, 1.0, 1.0)),
               ((50, 62, 62), (1.0, 1.0, 1.0))],
    ),
    "transposed": dict(
        id=906, name="Dataset906_TilewiseTransposed", family="ct",
        channel_names={"0": "CT"},
        labels={"background": 0, "liver": 1, "tumour": 2},
        # the coarse axis is x (the LAST numpy axis): SimpleITK (x, y, z) spacing (3, p, p). nnU-Net's planner puts
        # the axis with the largest target spacing first, so transpose_forward becomes [2, 0, 1]
        cases=[((36, 40, 12), (3.0, 1.0, 1.0)), ((40, 40, 13), (3.0, 0.9, 0.9)), ((38, 42, 12), (3.0, 1.1, 1.1)),
               ((40, 38, 14), (3.0, 1.0, 1.0)), ((36, 40, 13), (3.0, 0.95, 0.95))],
    ),
    # benchmark dataset (see make_bench_model): realistic sizes at 1.5 mm isotropic; not a test kind
    "bench": dict(
        id=990, name="Dataset990_TilewiseBench", family="ct",
        channel_names={"0": "CT"},
        labels={"background": 0, "liver": 1, "tumour": 2},
        cases=[((140, 160, 160), (1.5, 1.5, 1.5)), ((150, 172, 168), (1.5, 1.5, 1.5)),
               ((128, 150, 156), (1.5, 1.5, 1.5)), ((160, 178, 172), (1.5, 1.5, 1.5)),
               ((144, 164, 150), (1.5, 1.5, 1.5))],
    ),
}

# Planner knobs. These are attributes nnU-Net's planners expose; the planner then plans (patch size, topology,
# batch size, ...) for this tiny network by its own rules.
_TINY = dict(UNet_base_num_features=4, UNet_max_features_3d=16, UNet_max_features_2d=16)
_PLANNERS = {
    "default": dict(module="nnunetv2.experiment_planning.experiment_planners.default_experiment_planner",
                    cls="ExperimentPlanner", plans_name="nnUNetPlans", kwargs={},
                    attrs=dict(_TINY, UNet_blocks_per_stage_encoder=(2,) * 14,
                               UNet_blocks_per_stage_decoder=(1,) * 13)),
    "resencM": dict(module="nnunetv2.experiment_planning.experiment_planners.residual_unets."
                           "residual_encoder_unet_planners",
                    cls="nnUNetPlannerResEncM", plans_name="nnUNetResEncUNetMPlans", kwargs={},
                    attrs=dict(_TINY, UNet_blocks_per_stage_encoder=(1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2),
                               UNet_blocks_per_stage_decoder=(1,) * 12)),
    # small memory target: the planner shrinks the full-resolution patch well below the median image size, which is
    # exactly the situation in which nnU-Net adds a 3d_lowres (+ 3d_cascade_fullres) configuration
    "lowres": dict(module="nnunetv2.experiment_planning.experiment_planners.default_experiment_planner",
                   cls="ExperimentPlanner", plans_name="nnUNetPlans", kwargs={"gpu_memory_target_in_gb": 0.003},
                   attrs=dict(_TINY, UNet_blocks_per_stage_encoder=(2,) * 14,
                              UNet_blocks_per_stage_decoder=(1,) * 13)),
    # the benchmark model: nnU-Net's default planner and default network widths (32 -> 320); only the VRAM target is
    # lowered, so that the 3d_fullres patch comes out 80^3 for the bench dataset (1.6 - 1.85 GB all give 80^3)
    "bench": dict(module="nnunetv2.experiment_planning.experiment_planners.default_experiment_planner",
                  cls="ExperimentPlanner", plans_name="nnUNetPlans", kwargs={"gpu_memory_target_in_gb": 1.75},
                  attrs={}),
}

_KINDS = {
    "3d": dict(dataset="ct", planner="default", configuration="3d_fullres"),
    "2d": dict(dataset="ct", planner="default", configuration="2d"),
    "two_channel": dict(dataset="mr", planner="default", configuration="3d_fullres"),
    "regions": dict(dataset="regions", planner="default", configuration="3d_fullres"),
    "aniso": dict(dataset="aniso", planner="default", configuration="3d_fullres"),
    "resenc": dict(dataset="ct", planner="resencM", configuration="3d_fullres"),
    "lowres": dict(dataset="lowres", planner="lowres", configuration="3d_lowres"),
    "transposed": dict(dataset="transposed", planner="default", configuration="3d_fullres"),
    # not in MODEL_KINDS and refused by make_model: built only by make_bench_model (make_case accepts it)
    "bench": dict(dataset="bench", planner="bench", configuration="3d_fullres"),
}

_DEFAULT_SPACING = {"ct": (1.0, 1.0, 1.5), "mr": (1.0, 1.0, 1.0), "regions": (1.0, 1.0, 1.5),
                    "aniso": (0.8, 0.8, 4.0), "lowres": (1.0, 1.0, 1.0), "transposed": (3.0, 1.0, 1.0),
                    "bench": (1.5, 1.5, 1.5)}

# numpy (z, y, x) shape of the sample case the heads are calibrated on, where make_case's default does not fit
_CALIB_SHAPE = {"transposed": (40, 48, 14), "bench": (160, 160, 160)}

_TRAINER = "nnUNetTrainer"
_SEG_SCALE = 20.0          # makes the random heads decisive
_FOLD_NOISE = 0.03         # relative perturbation between folds
_MIN_LABEL_FRACTION = 0.03  # every label must win at least this share of the calibration patch
_BUILD_VERSION = "1"       # bump to invalidate on-disk caches after changing the factory

_lock = threading.RLock()


def _spec(kind: str) -> dict:
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    return _KINDS[kind]


def _dataset(kind: str) -> dict:
    return _DATASETS[_spec(kind)["dataset"]]


def default_spacing(kind: str) -> tuple[float, float, float]:
    """The SimpleITK (x, y, z) spacing :func:`make_case` uses for ``kind`` when none is given."""
    return _DEFAULT_SPACING[_spec(kind)["dataset"]]


def num_channels(kind: str) -> int:
    return len(_dataset(kind)["channel_names"])


def expected_labels(kind: str) -> list[int]:
    """Foreground label values a prediction of ``kind`` contains (region kinds: the regions_class_order values)."""
    ds = _dataset(kind)
    if "regions_class_order" in ds:
        return list(ds["regions_class_order"])
    return sorted(v for v in ds["labels"].values() if v != 0)


# --------------------------------------------------------------------------------------------------------------------
# synthetic images
# --------------------------------------------------------------------------------------------------------------------

def _ellipsoid(grid, center, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def _synthesize(family: str, shape, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Returns (channel images, label map with values 0..3) in numpy (z, y, x) order."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive ints (z, y, x), got {shape}")
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    body_c = rng.uniform(-0.05, 0.05, 3)
    body = _ellipsoid(grid, body_c, (0.95, 0.8, 0.88))
    organ_c = body_c + rng.uniform(-0.25, 0.25, 3)
    organ = _ellipsoid(grid, organ_c, rng.uniform(0.35, 0.45, 3)) & body
    inner_c = organ_c + rng.uniform(-0.08, 0.08, 3)
    inner = _ellipsoid(grid, inner_c, rng.uniform(0.18, 0.24, 3)) & organ
    core = _ellipsoid(grid, inner_c, rng.uniform(0.08, 0.11, 3)) & inner
    other = _ellipsoid(grid, body_c + rng.uniform(-0.4, 0.4, 3), rng.uniform(0.1, 0.2, 3)) & body & ~organ

    seg = np.zeros(shape, np.uint8)
    seg[organ] = 1
    seg[inner] = 2
    seg[core] = 3
    if family == "ct":
        img = np.full(shape, -1000.0, np.float32)
        img[body] = 30.0
        img[other] = 700.0  # bone-ish
        img[organ] = 70.0
        img[inner] = 120.0
        img[core] = 20.0
        img += rng.normal(0.0, 12.0, shape).astype(np.float32)
        return [np.clip(np.round(img), -1024, 3071).astype(np.int16)], seg
    if family == "mr":
        chans = []
        for contrast in ((300.0, 450.0, 650.0, 200.0, 120.0), (200.0, 380.0, 250.0, 700.0, 500.0)):
            img = np.zeros(shape, np.float32)
            img[body] = contrast[0]
            img[other] = contrast[4]
            img[organ] = contrast[1]
            img[inner] = contrast[2]
            img[core] = contrast[3]
            img[body] += rng.normal(0.0, 15.0, int(body.sum())).astype(np.float32)
            img[body] = np.maximum(img[body], 1.0)  # background stays exactly 0 (nonzero cropping + mask norm)
            chans.append(img)
        return chans, seg
    raise ValueError(family)


def _to_sitk(arr: np.ndarray, spacing, direction, origin) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        if len(direction) != 9:
            raise ValueError("direction must have 9 entries (SimpleITK row-major 3x3)")
        img.SetDirection(tuple(float(d) for d in direction))
    return img


def make_case(path: Path, kind: str = "3d", shape: tuple[int, int, int] = (40, 48, 56),
              spacing: tuple[float, float, float] | None = None,
              direction: tuple[float, ...] | None = None, origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
              seed: int = 0, channel: int = 0) -> Path:
    """Write one synthetic image (SimpleITK; file type from the suffix of ``path``: .nii.gz, .nii, .nrrd, .mha, .mhd)
    of the given numpy shape (z, y, x) with the given spacing in SimpleITK (x, y, z) order (default:
    :func:`default_spacing`), direction (9 floats, SimpleITK row-major; default identity) and origin.
    Content: CT-like (int16, air -1000 around a body ellipsoid with organ-like blobs) for every kind except
    two_channel, which is MR-like (float32, background exactly 0); ``channel`` picks the MR contrast.
    The same ``seed`` gives the same anatomy in every channel. Returns ``path``."""
    path = Path(path)
    ds = _dataset(kind)
    n_ch = len(ds["channel_names"])
    if not 0 <= channel < n_ch:
        raise ValueError(f"kind {kind!r} has {n_ch} channel(s), got channel={channel}")
    chans, _ = _synthesize(ds["family"], shape, seed)
    spacing = default_spacing(kind) if spacing is None else spacing
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_to_sitk(chans[channel], spacing, direction, origin), str(path))
    return path


def case_files(folder: Path, case: str, kind: str, **make_case_kwargs) -> list[Path]:
    """Write an nnU-Net-named case (``{case}_0000.nii.gz``, ``{case}_0001.nii.gz``, ...) with the channel count
    ``kind`` needs; ``make_case_kwargs`` go to :func:`make_case` (not ``channel``)."""
    folder = Path(folder)
    if "channel" in make_case_kwargs:
        raise TypeError("case_files writes every channel; do not pass channel=")
    return [make_case(folder / f"{case}_{c:04d}.nii.gz", kind, channel=c, **make_case_kwargs)
            for c in range(num_channels(kind))]


# --------------------------------------------------------------------------------------------------------------------
# nnU-Net plumbing
# --------------------------------------------------------------------------------------------------------------------

_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@contextlib.contextmanager
def _nnunet_env(raw: Path, preprocessed: Path, results: Path):
    """Point nnU-Net at the given folders. nnunetv2 >= 2.6 reads the environment lazily (``_EnvPath``); older
    versions bind plain strings at import time, so those module attributes are patched too (and restored)."""
    new = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed), "nnUNet_results": str(results),
           "nnUNet_n_proc_DA": str(max(1, torch.get_num_threads()))}
    old_env = {k: os.environ.get(k) for k in new}
    patched = []
    try:
        os.environ.update(new)
        for name, mod in list(sys.modules.items()):
            if not name.startswith("nnunetv2") or mod is None:
                continue
            for var in _PATH_VARS:
                val = mod.__dict__.get(var, _MISSING)
                if val is _MISSING or isinstance(val, os.PathLike):
                    continue
                if val is None or isinstance(val, str):
                    patched.append((mod, var, val))
                    setattr(mod, var, new[var])
        yield
    finally:
        for mod, var, val in reversed(patched):
            setattr(mod, var, val)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_MISSING = object()


@contextlib.contextmanager
def _quiet():
    """Swallow nnU-Net's prints (stdout only; warnings are left to the caller's filters)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class _InlineMultiprocessing:
    """Stands in for the ``multiprocessing`` module inside nnU-Net's fingerprint extractor: a thread pool instead
    of spawning interpreters (which costs seconds each and is pointless for five tiny cases)."""

    class _Context:
        Pool = ThreadPool

    @classmethod
    def get_context(cls, method=None):
        return cls._Context


@contextlib.contextmanager
def _patched_attr(obj, name, value):
    if not hasattr(obj, name):
        yield
        return
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=4, sort_keys=False))


def _atomic_build(final: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and move the result to ``final`` unless someone else got there first."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _plan_dir(root: Path, dataset_key: str, planner_key: str) -> Path:
    return Path(root) / "tilewise_models" / f"_planned_v{_BUILD_VERSION}" / f"{dataset_key}__{planner_key}"


def _planned(root: Path, dataset_key: str, planner_key: str) -> Path:
    """Raw dataset + nnU-Net fingerprint + nnU-Net plans for one dataset/planner pair (cached)."""
    final = _plan_dir(root, dataset_key, planner_key)

    def build(tmp: Path):
        ds = _DATASETS[dataset_key]
        pl = _PLANNERS[planner_key]
        raw, pre = tmp / "nnUNet_raw", tmp / "nnUNet_preprocessed"
        raw_ds = raw / ds["name"]
        (raw_ds / "imagesTr").mkdir(parents=True)
        (raw_ds / "labelsTr").mkdir()
        n_ch = len(ds["channel_names"])
        for i, (shape, spacing) in enumerate(ds["cases"]):
            chans, seg = _synthesize(ds["family"], shape, seed=1000 + 17 * ds["id"] + i)
            if "regions_class_order" not in ds:
                seg = np.minimum(seg, 2)  # labels 0, 1, 2
            case = f"case_{i:03d}"
            for c in range(n_ch):
                sitk.WriteImage(_to_sitk(chans[c], spacing, None, (0, 0, 0)),
                                str(raw_ds / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
            sitk.WriteImage(_to_sitk(seg, spacing, None, (0, 0, 0)), str(raw_ds / "labelsTr" / f"{case}.nii.gz"))
        dataset_json = {"channel_names": ds["channel_names"], "labels": ds["labels"],
                        "numTraining": len(ds["cases"]), "file_ending": ".nii.gz",
                        "name": ds["name"].split("_", 1)[1],
                        "description": "synthetic Tilewise test dataset"}
        if "regions_class_order" in ds:
            dataset_json["regions_class_order"] = ds["regions_class_order"]
        _write_json(dataset_json, raw_ds / "dataset.json")

        import importlib
        from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor as fe_mod
        from nnunetv2.utilities import utils as nnunet_utils
        planner_mod = importlib.import_module(pl["module"])
        planner_cls = getattr(planner_mod, pl["cls"])
        with _nnunet_env(raw, pre, tmp / "nnUNet_results"), _quiet(), \
                _patched_attr(fe_mod, "multiprocessing", _InlineMultiprocessing), \
                _patched_attr(nnunet_utils, "Pool", ThreadPool):
            fpe = fe_mod.DatasetFingerprintExtractor(ds["name"], num_processes=1, verbose=False)
            fpe.show_progress_bar = False
            # nnU-Net samples 10e7 foreground intensities in total; 1e5 is plenty for five tiny cases
            fpe.num_foreground_voxels_for_intensitystats = 1e5
            fpe.run(overwrite_existing=True)
            planner = planner_cls(ds["name"], **pl["kwargs"])
            for attr, value in pl["attrs"].items():
                if not hasattr(planner, attr):
                    raise RuntimeError(f"{pl['cls']} has no attribute {attr}; nnU-Net changed, update the factory")
                setattr(planner, attr, value)
            planner.plan_experiment()
        plans_file = pre / ds["name"] / f"{pl['plans_name']}.json"
        if not plans_file.is_file():
            raise RuntimeError(f"planner did not write {plans_file}")

    with _lock:
        return _atomic_build(final, build)


# --------------------------------------------------------------------------------------------------------------------
# networks and checkpoints
# --------------------------------------------------------------------------------------------------------------------

def _managers(plans: dict, dataset_json: dict, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    pm = PlansManager(deepcopy(plans))
    cm = pm.get_configuration(configuration)
    lm = pm.get_label_manager(dataset_json)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    return pm, cm, lm, n_in


def _build_network(plans: dict, dataset_json: dict, configuration: str, seed: int) -> torch.nn.Module:
    """The network exactly as nnUNetTrainer builds it for training (deep supervision on), seeded."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    pm, cm, lm, n_in = _managers(plans, dataset_json, configuration)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nnUNetTrainer.build_network_architecture(pm, cm, n_in, lm.num_segmentation_heads,
                                                       enable_deep_supervision=True)
    return net


def _seg_layers(net: torch.nn.Module) -> list[torch.nn.Module]:
    layers = getattr(getattr(net, "decoder", None), "seg_layers", None)
    if layers is None:
        raise RuntimeError(f"{type(net).__name__} has no decoder.seg_layers")
    return list(layers)


@contextlib.contextmanager
def _inference_mode_net(net):
    dec = net.decoder
    old = dec.deep_supervision
    dec.deep_supervision = False
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        dec.deep_supervision = old


def _calibration_patch(root: Path, kind: str, plans: dict, dataset_json: dict, configuration: str) -> torch.Tensor:
    """A sample case preprocessed by nnU-Net's own preprocessor, center-cropped/padded to the patch size."""
    pm, cm, lm, n_in = _managers(plans, dataset_json, configuration)
    with tempfile.TemporaryDirectory(dir=root) as td:
        shape = _CALIB_SHAPE.get(kind)
        files = case_files(Path(td), "calib", kind, seed=4242, **({} if shape is None else {"shape": shape}))
        with _quiet():
            preprocessor = cm.preprocessor_class(verbose=False)
            data, _, _ = preprocessor.run_case([str(f) for f in files], None, pm, cm, dataset_json)
    data = np.asarray(data, dtype=np.float32)
    if n_in > data.shape[0]:  # cascade input: append a plausible one-hot previous-stage segmentation
        extra = n_in - data.shape[0]
        ramp = np.linspace(0, extra + 1, data.shape[-1], endpoint=False).astype(int)
        onehot = np.stack([(ramp == k + 1) for k in range(extra)]).astype(np.float32)
        onehot = np.broadcast_to(onehot.reshape((extra,) + (1,) * (data.ndim - 2) + (-1,)),
                                 (extra,) + data.shape[1:])
        data = np.concatenate([data, onehot], 0)
    patch = list(cm.patch_size)
    if len(patch) == 2:  # 2d: middle slice
        data = data[:, data.shape[1] // 2]
    out = np.zeros([data.shape[0]] + patch, np.float32)
    src, dst = [], []
    for n, p in zip(data.shape[1:], patch):
        if n >= p:
            s = (n - p) // 2
            src.append(slice(s, s + p))
            dst.append(slice(0, p))
        else:
            s = (p - n) // 2
            src.append(slice(0, n))
            dst.append(slice(s, s + n))
    out[(slice(None), *dst)] = data[(slice(None), *src)]
    return torch.from_numpy(out)[None]


def _label_fractions(logits: torch.Tensor, regions: bool, regions_class_order) -> np.ndarray:
    """Share of each label value (index = label) in the nnU-Net label map derived from logits (1, C, ...)."""
    lg = logits[0]
    if regions:
        seg = torch.zeros(lg.shape[1:], dtype=torch.long)
        for i, c in enumerate(regions_class_order):
            seg[lg[i] > 0] = c
        n = max(regions_class_order) + 1
    else:
        seg = lg.argmax(0)
        n = lg.shape[0]
    return np.bincount(seg.flatten().numpy(), minlength=n) / seg.numel()


def _balance_bias(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """Per-channel bias offsets so that every label wins a fair share of the calibration patch."""
    lg = logits[0].reshape(logits.shape[1], -1).double()
    c = lg.shape[0]
    if regions:
        # whole / core / enhancing style: decreasing positive shares
        shares = np.linspace(0.6, 0.25, c)
        return torch.tensor([-torch.quantile(lg[i], 1 - shares[i]).item() for i in range(c)])
    b = -lg.median(1).values
    scale = float(lg.std())
    target = np.log(1.0 / c)
    for _ in range(200):
        frac = np.bincount((lg + b[:, None]).argmax(0).numpy(), minlength=c) / lg.shape[1]
        if frac.min() > 0.8 / c:
            break
        b = b + 0.05 * scale * torch.from_numpy(target - np.log(frac + 1e-3))
    return b


def _make_fold_weights(plans, dataset_json, configuration, label_manager, root, kind, seed, folds):
    regions = label_manager.has_regions
    rco = label_manager.regions_class_order if regions else None
    calib = _calibration_patch(root, kind, plans, dataset_json, configuration)
    for attempt in range(20):
        base_seed = 7919 * seed + 104729 * attempt + 12345
        net = _build_network(plans, dataset_json, configuration, base_seed)
        with torch.no_grad():
            for layer in _seg_layers(net):
                layer.weight.mul_(_SEG_SCALE)
                if layer.bias is not None:
                    layer.bias.mul_(_SEG_SCALE)
        with _inference_mode_net(net):
            logits = net(calib)
        offset = _balance_bias(logits, regions).to(torch.float32)
        with torch.no_grad():
            for layer in _seg_layers(net):
                if layer.weight.shape[0] == offset.numel():
                    layer.bias.add_(offset)
        base = {k: v.detach().clone() for k, v in net.state_dict().items()}
        weights, ok = {}, True
        for f in folds:
            gen = torch.Generator().manual_seed(base_seed + 1000 + int(f))
            sd = {}
            for k, v in base.items():
                if v.is_floating_point():
                    noise = torch.randn(v.shape, generator=gen, dtype=v.dtype)
                    sd[k] = (v + _FOLD_NOISE * v.abs().mean() * noise).contiguous()
                else:
                    sd[k] = v.clone()
            net.load_state_dict(sd)
            with _inference_mode_net(net):
                frac = _label_fractions(net(calib), regions, rco)
            labels = rco if regions else range(frac.size)
            if min(frac[i] for i in labels) < _MIN_LABEL_FRACTION:
                ok = False
                break
            weights[f] = sd
        if ok:
            return weights
    raise RuntimeError(f"could not find decisive weights with all labels for kind {kind!r}, seed {seed}")


def _logging_dict(n_epochs: int, n_fg: int, rng: np.random.Generator) -> dict:
    """What nnU-Net's logger checkpoints: lists with one entry per epoch, numpy float64 metrics."""
    log = {k: [] for k in ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses",
                           "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps")}
    t0 = 1.7e9
    ema = None
    for e in range(n_epochs):
        dice = [np.float64(min(0.95, 0.3 + 0.1 * e + rng.uniform(0, 0.05))) for _ in range(n_fg)]
        mean = np.float64(np.nanmean(dice))
        ema = mean if ema is None else ema * 0.9 + 0.1 * mean
        log["mean_fg_dice"].append(mean)
        log["ema_fg_dice"].append(ema)
        log["dice_per_class_or_region"].append(dice)
        log["train_losses"].append(np.float64(-0.1 * e + rng.uniform(-0.05, 0.0)))
        log["val_losses"].append(np.float64(-0.08 * e + rng.uniform(-0.05, 0.0)))
        log["lrs"].append(float(0.01 * (1 - e / n_epochs) ** 0.9))
        log["epoch_start_timestamps"].append(t0 + 60.0 * e)
        log["epoch_end_timestamps"].append(t0 + 60.0 * e + 55.5)
    return log


def _checkpoint(net_weights: dict, plans: dict, dataset_json: dict, configuration: str, fold: int,
                label_manager, patch_dim: int, seed: int, momentum_buffers: bool = True) -> dict:
    rng = np.random.default_rng(seed * 31 + fold)
    n_epochs = 3
    log = _logging_dict(n_epochs, len(label_manager.foreground_regions if label_manager.has_regions
                                      else label_manager.foreground_labels), rng)
    # optimizer state as nnU-Net's SGD + PolyLRScheduler write it (momentum buffers, initial_lr)
    gen = torch.Generator().manual_seed(seed * 31 + fold)
    unique, seen = [], set()  # a module's state_dict lists shared tensors under several keys; parameters() once
    for k, v in net_weights.items():
        alias = (v.data_ptr(), tuple(v.shape), v.dtype)
        if v.is_floating_point() and "running_" not in k and alias not in seen:
            seen.add(alias)
            unique.append(v)
    params = [torch.nn.Parameter(v.clone()) for v in unique]
    opt = torch.optim.SGD(params, lr=0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    for group in opt.param_groups:
        group["initial_lr"] = 0.01
        group["lr"] = log["lrs"][-1]
    for p in params if momentum_buffers else ():  # without: the state of an SGD that has not stepped yet
        opt.state[p]["momentum_buffer"] = 1e-3 * torch.randn(p.shape, generator=gen)
    return {
        "network_weights": net_weights,
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": log,
        "_best_ema": np.float64(max(log["ema_fg_dice"])),
        "current_epoch": n_epochs,
        "init_args": {"plans": deepcopy(plans), "configuration": configuration, "fold": fold,
                      "dataset_json": deepcopy(dataset_json), "device": torch.device("cpu")},
        "trainer_name": _TRAINER,
        "inference_allowed_mirroring_axes": (0, 1) if patch_dim == 2 else (0, 1, 2),
    }


def _write_model_folder(out: Path, plans: dict, dataset_json: dict, fingerprint: dict, configuration: str,
                        weights: dict, checkpoint_name: str, seed: int, momentum_buffers: bool = True) -> None:
    pm, cm, lm, n_in = _managers(plans, dataset_json, configuration)
    out.mkdir(parents=True)
    _write_json(dataset_json, out / "dataset.json")
    _write_json(plans, out / "plans.json")
    _write_json(fingerprint, out / "dataset_fingerprint.json")
    for f, sd in weights.items():
        fd = out / f"fold_{f}"
        fd.mkdir()
        torch.save(_checkpoint(sd, plans, dataset_json, configuration, f, lm, len(cm.patch_size), seed,
                               momentum_buffers), fd / checkpoint_name)
        _write_json({"device": "cpu", "torch_version": torch.__version__, "cudnn_version": "None",
                     "configuration": configuration, "fold": f, "trainer": _TRAINER,
                     "note": "written by tests/model_factory.py"}, fd / "debug.json")


def _model_key(kind, folds, seed, checkpoint_name) -> str:
    h = hashlib.sha1(checkpoint_name.encode()).hexdigest()[:8]
    return f"{kind}__folds-{'-'.join(str(f) for f in folds)}__seed-{seed}__{h}"


def _model_base(root: Path, kind, folds, seed, checkpoint_name) -> Path:
    return Path(root) / "tilewise_models" / f"v{_BUILD_VERSION}" / _model_key(kind, folds, seed, checkpoint_name)


def _trainer_dir(base: Path, dataset_name: str, plans_name: str, configuration: str) -> Path:
    return base / "nnUNet_results" / dataset_name / f"{_TRAINER}__{plans_name}__{configuration}"


def _check_args(kind, folds, checkpoint_name):
    _spec(kind)
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind {kind!r} is not a test model kind (use make_bench_model for 'bench'); "
                         f"expected one of {MODEL_KINDS}")
    folds = tuple(int(f) for f in folds)
    if not folds or len(set(folds)) != len(folds) or min(folds) < 0:
        raise ValueError(f"folds must be distinct non-negative ints, got {folds}")
    if not checkpoint_name or "/" in checkpoint_name or "\\" in checkpoint_name:
        raise ValueError(f"bad checkpoint_name {checkpoint_name!r}")
    return folds


def make_model(root: Path, kind: str = "3d", folds: tuple[int, ...] = (0,), seed: int = 0,
               checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """Build (or reuse, cached by arguments under ``root``) a trained-model folder and return its path.

    kinds:
      "3d"          3d_fullres, 1 channel CT ("CT" normalisation), labels background/liver/tumour
      "2d"          configuration 2d of the same dataset (same plans file)
      "two_channel" 3d_fullres, channels {"0": "T1", "1": "T2"} (zscore, nonzero mask used for normalisation)
      "regions"     3d_fullres region-based: labels {"background": 0, "whole": [1,2,3], "core": [2,3],
                    "enhancing": [3]}, regions_class_order [1, 2, 3] (sigmoid heads)
      "aniso"       3d_fullres, 4 mm slices and 0.8-1.2 mm in-plane; target spacing (4, 1, 1) in (z, y, x)
      "resenc"      3d_fullres planned by nnUNetPlannerResEncM -> ResidualEncoderUNet
      "lowres"      3d_lowres, planned honestly by nnU-Net (a small VRAM target makes the planner add
                    3d_lowres + 3d_cascade_fullres); the plans contain the cascade. The matching
                    3d_cascade_fullres model is built alongside, see :func:`make_cascade_model`.
      "transposed"  3d_fullres CT whose coarse axis is x (SimpleITK spacing (3, 1, 1), the last numpy axis), so
                    nnU-Net plans a non-identity transpose_forward ([2, 0, 1]); cases: small x, e.g. (40, 48, 14)
    Every fold has slightly different (perturbed) weights; all are decisive and predict every label.
    """
    folds = _check_args(kind, folds, checkpoint_name)
    spec = _spec(kind)
    ds = _DATASETS[spec["dataset"]]
    pl = _PLANNERS[spec["planner"]]
    root = Path(root)
    base = _model_base(root, kind, folds, seed, checkpoint_name)
    target = _trainer_dir(base, ds["name"], pl["plans_name"], spec["configuration"])

    def build(tmp: Path):
        planned = _planned(root, spec["dataset"], spec["planner"])
        pre = planned / "nnUNet_preprocessed" / ds["name"]
        plans = json.loads((pre / f"{pl['plans_name']}.json").read_text())
        dataset_json = json.loads((pre / "dataset.json").read_text())
        fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
        configs = [spec["configuration"]]
        if kind == "lowres":
            for c in ("3d_lowres", "3d_cascade_fullres"):
                if c not in plans["configurations"]:
                    raise RuntimeError(f"nnU-Net's planner produced no {c} configuration for the lowres dataset "
                                       f"(got {sorted(plans['configurations'])}); adjust _PLANNERS['lowres']")
            configs.append("3d_cascade_fullres")
        for configuration in configs:
            pm, cm, lm, n_in = _managers(plans, dataset_json, configuration)
            weights = _make_fold_weights(plans, dataset_json, configuration, lm, root, kind, seed, folds)
            _write_model_folder(_trainer_dir(tmp, ds["name"], pl["plans_name"], configuration), plans,
                                dataset_json, fingerprint, configuration, weights, checkpoint_name, seed)

    with _lock:
        if not target.is_dir():
            if base.is_dir():  # incomplete leftovers
                shutil.rmtree(base)
            _atomic_build(base, build)
    return target


def make_cascade_model(root: Path, folds: tuple[int, ...] = (0,), seed: int = 0,
                       checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """The 3d_cascade_fullres model folder that belongs to ``make_model(root, "lowres", ...)`` (same plans;
    checkpoints with ``init_args['configuration'] == '3d_cascade_fullres'`` and a network taking the image plus the
    one-hot previous-stage segmentation). Engines that do not run cascades should refuse it."""
    lowres = make_model(root, "lowres", folds, seed, checkpoint_name)
    return lowres.parent / lowres.name.replace("__3d_lowres", "__3d_cascade_fullres")


BENCH_CASE_NAME = "bench_ct_0000.nii.gz"
BENCH_CASE_SHAPE = (160, 160, 160)
_BENCH_CASE_SEED = 2024


def make_bench_model(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A benchmark-sized model and case (not used by the test suite: building takes a minute, predicting with
    nnU-Net on a CPU minutes). Returns ``(model_dir, case_path)``; both are cached under ``root``.

    * dataset: five synthetic CT-like cases of 128-178 voxels per side at 1.5 mm isotropic, labels
      background / liver / tumour (three output channels), fingerprinted by nnU-Net's extractor;
    * plans: nnU-Net's default ``ExperimentPlanner`` with its default network (PlainConvUNet, features 32 -> 320,
      two convolutions per stage); only ``gpu_memory_target_in_gb`` is lowered (``_PLANNERS['bench']``) so that the
      3d_fullres patch is 80 x 80 x 80 (five stages, about 16.5 M parameters);
    * weights: fold_0 only, seeded random with decisive, bias-balanced heads (as :func:`make_model`), stored as
      float16 (a float32 network loads them; nnU-Net's predictor was checked to) with shared tensors stored once
      and an optimizer state without momentum buffers, so the checkpoint is about 33 MB instead of ~130 MB;
    * case: ``root / "bench_ct_0000.nii.gz"``, int16 CT-like (air -1000 around a body), numpy (z, y, x)
      160 x 160 x 160 at 1.5 mm, identity direction; the same anatomy for every ``seed`` (the seed only changes the
      weights). ``root`` holds no other ``.nii.gz`` file, so it can be passed to nnU-Net's ``-i`` as is.
    """
    root = Path(root)
    kind, spec = "bench", _KINDS["bench"]
    ds, pl = _DATASETS[spec["dataset"]], _PLANNERS[spec["planner"]]
    configuration = spec["configuration"]
    seed = int(seed)
    base = Path(root) / "tilewise_models" / f"v{_BUILD_VERSION}" / f"bench__seed-{seed}"
    target = _trainer_dir(base, ds["name"], pl["plans_name"], configuration)

    def build(tmp: Path):
        planned = _planned(root, spec["dataset"], spec["planner"])
        pre = planned / "nnUNet_preprocessed" / ds["name"]
        plans = json.loads((pre / f"{pl['plans_name']}.json").read_text())
        dataset_json = json.loads((pre / "dataset.json").read_text())
        fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
        pm, cm, lm, n_in = _managers(plans, dataset_json, configuration)
        sd32 = _make_fold_weights(plans, dataset_json, configuration, lm, root, kind, seed, (0,))[0]
        net = _build_network(plans, dataset_json, configuration, 0)
        net.load_state_dict(sd32)
        del sd32
        net.half()
        sd16 = net.state_dict()  # keeps encoder / decoder.encoder / all_modules aliases sharing one storage
        # what is stored must still be decisive and predict every label once loaded into a float32 network
        check = _build_network(plans, dataset_json, configuration, 1)
        check.load_state_dict(sd16)
        with _inference_mode_net(check):
            frac = _label_fractions(check(_calibration_patch(root, kind, plans, dataset_json, configuration)),
                                    False, None)
        if frac.min() < _MIN_LABEL_FRACTION:
            raise RuntimeError(f"float16 bench weights lost a label (fractions {frac}); try another seed")
        del check
        _write_model_folder(_trainer_dir(tmp, ds["name"], pl["plans_name"], configuration), plans, dataset_json,
                            fingerprint, configuration, {0: sd16}, "checkpoint_final.pth", seed,
                            momentum_buffers=False)

    with _lock:
        if not target.is_dir():
            if base.is_dir():  # incomplete leftovers
                shutil.rmtree(base)
            _atomic_build(base, build)
        case = root / BENCH_CASE_NAME
        if not case.is_file():
            tmp_dir = Path(tempfile.mkdtemp(prefix=".bench_case.", dir=base.parent))
            try:  # written elsewhere and moved: root never holds a half-written (or second) .nii.gz
                os.replace(make_case(tmp_dir / BENCH_CASE_NAME, kind, shape=BENCH_CASE_SHAPE, seed=_BENCH_CASE_SEED),
                           case)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
    return target, case


def model_info(model_dir: Path) -> dict:
    """Small summary of a factory model folder: configuration, patch size, network class, features, ..."""
    model_dir = Path(model_dir)
    plans = json.loads((model_dir / "plans.json").read_text())
    configuration = model_dir.name.split("__")[-1]
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    cm = PlansManager(plans).get_configuration(configuration)
    kw = cm.network_arch_init_kwargs
    return {"configuration": configuration, "patch_size": list(cm.patch_size), "spacing": list(cm.spacing),
            "network": cm.network_arch_class_name.rsplit(".", 1)[-1],
            "features_per_stage": list(kw["features_per_stage"]), "strides": [list(s) for s in kw["strides"]],
            "transpose_forward": plans["transpose_forward"], "batch_size": cm.batch_size}


# --------------------------------------------------------------------------------------------------------------------
# untrusted checkpoints
# --------------------------------------------------------------------------------------------------------------------

UNTRUSTED_EXECUTIONS: list[str] = []


def _untrusted_payload_executed(marker: str) -> "UntrustedPayload":
    """Runs when an unpickler *executes* the payload: evidence that a loader trusted the file."""
    UNTRUSTED_EXECUTIONS.append(marker)
    return UntrustedPayload(marker)


class UntrustedPayload:
    """A custom object in a checkpoint. Harmless, but unpickling it calls :func:`_untrusted_payload_executed`,
    which ``torch.load(weights_only=True)`` must refuse even when numpy scalars and ``torch.device`` are allowed."""

    def __init__(self, marker: str = "tilewise-untrusted"):
        self.marker = marker

    def __reduce__(self):
        return _untrusted_payload_executed, (self.marker,)


def make_untrusted_checkpoint(model_dir: Path, fold: int = 0, checkpoint_name: str = "checkpoint_final.pth") -> None:
    """Rewrite ``fold_X/<checkpoint_name>`` so it also contains an :class:`UntrustedPayload` object (under the key
    ``'tilewise_payload'`` and inside ``init_args``); everything else stays a valid nnU-Net checkpoint."""
    path = Path(model_dir) / f"fold_{fold}" / checkpoint_name
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["tilewise_payload"] = UntrustedPayload(f"{path}")
    ckpt["init_args"]["payload"] = UntrustedPayload(f"{path}:init_args")
    torch.save(ckpt, path)


# --------------------------------------------------------------------------------------------------------------------
# reference predictions
# --------------------------------------------------------------------------------------------------------------------

class _Float32Sums:
    """Stands in for the ``torch`` module inside nnunetv2's predictor so that ``torch.half`` (the dtype of its
    ``predicted_logits`` and ``n_predictions`` sums) reads float32; everything else is torch itself. The Gaussian
    keeps ``compute_gaussian``'s own float16 default: nnU-Net's algorithm with float32 sums."""

    half = torch.float32

    def __getattr__(self, name: str):
        return getattr(torch, name)


@contextlib.contextmanager
def _nnunet_with_float32_sums():
    from nnunetv2.inference import predict_from_raw_data

    saved = predict_from_raw_data.torch
    predict_from_raw_data.torch = _Float32Sums()
    try:
        yield
    finally:
        predict_from_raw_data.torch = saved


_REFERENCES: dict[tuple, np.ndarray] = {}
"""nnU-Net's label maps computed in this test session, by :func:`_reference_key`: several test files compare with
the same nnU-Net prediction (same model, same case content, same settings), which then runs once."""


def _reference_key(model_dir: Path, image_files: list[Path], *settings: object) -> tuple:
    """What makes nnU-Net's prediction what it is: the model folder's JSON and checkpoint files (path, size and
    modification time), the image bytes, and the settings."""
    model_dir = Path(model_dir).resolve()
    model_files = sorted(p for p in model_dir.rglob("*") if p.suffix in (".json", ".pth"))
    model_state = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in model_files)
    images = tuple(hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in image_files)
    return model_state, images, settings


def nnunet_reference(model_dir: Path, image_files: list[Path], folds=(0,), step: float = 0.5, mirroring: bool = True,
                     checkpoint_name: str = "checkpoint_final.pth", float32_sums: bool = False) -> np.ndarray:
    """Label map from nnU-Net's own ``nnUNetPredictor`` (CPU, in-process, reading with the reader class the plans
    name) for one case, in SimpleITK numpy order (z, y, x). ``float32_sums`` runs nnU-Net's algorithm with its two
    sliding-window sums in float32 instead of float16 (the Gaussian stays nnU-Net's float16 map): what Tilewise's
    ``reference`` preset computes. Computed once per test session for the same model, image bytes and settings."""
    key = _reference_key(model_dir, image_files, tuple(str(f) for f in folds), step, mirroring, checkpoint_name,
                         float32_sums)
    if key not in _REFERENCES:
        _REFERENCES[key] = _run_nnunet_reference(model_dir, image_files, folds, step, mirroring, checkpoint_name,
                                                 float32_sums)
    return _REFERENCES[key].copy()


def _run_nnunet_reference(model_dir: Path, image_files: list[Path], folds, step: float, mirroring: bool,
                          checkpoint_name: str, float32_sums: bool) -> np.ndarray:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    sums = _nnunet_with_float32_sums() if float32_sums else contextlib.nullcontext()
    with _quiet(), sums:
        predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), tuple(folds), checkpoint_name=checkpoint_name)
        reader = predictor.plans_manager.image_reader_writer_class()  # the reader the plans name, as nnU-Net's CLI
        img, props = reader.read_images([str(f) for f in image_files])
        seg = predictor.predict_single_npy_array(img, props, None, None, False)
    if isinstance(reader, SimpleITKIO):
        return np.asarray(seg)
    with tempfile.TemporaryDirectory() as folder:  # what nnU-Net's file holds, in SimpleITK's voxel order
        reader.write_seg(np.asarray(seg), str(Path(folder) / "seg.nii.gz"), props)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(Path(folder) / "seg.nii.gz")))


def nnunet_cascade_reference(cascade_dir: Path, image_files: list[Path], folds=(0,), step: float = 0.5,
                             mirroring: bool = True, float32_sums: bool = False,
                             previous_stage: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's own two-step cascade prediction of one case (CPU, in-process): ``nnUNetPredictor`` on the
    ``3d_lowres`` sibling of ``cascade_dir``, its segmentation written with the plans' reader class and read back as
    ``nnUNetv2_predict -prev_stage_predictions`` reads it, then ``nnUNetPredictor`` on ``cascade_dir`` with that
    segmentation. Returns (low-res stage, cascade) label maps in the reader's voxel order (SimpleITK's for the
    factory's models). ``float32_sums`` as in :func:`nnunet_reference`; ``previous_stage`` replaces the low-res
    segmentation fed to the second step (to check that the cascade network reads it)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    cascade_dir = Path(cascade_dir)
    configuration = json.loads((cascade_dir / "plans.json").read_text())["configurations"]
    previous = configuration[cascade_dir.name.rsplit("__", 1)[1]]["previous_stage"]
    lowres_dir = cascade_dir.parent / (cascade_dir.name.rsplit("__", 1)[0] + f"__{previous}")

    def predictor(model_dir: Path) -> nnUNetPredictor:
        created = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                  perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                  verbose_preprocessing=False, allow_tqdm=False)
        created.initialize_from_trained_model_folder(str(model_dir), tuple(folds))
        return created

    sums = _nnunet_with_float32_sums() if float32_sums else contextlib.nullcontext()
    with _quiet(), sums, tempfile.TemporaryDirectory() as folder:
        first = predictor(lowres_dir)
        reader = first.plans_manager.image_reader_writer_class()
        img, props = reader.read_images([str(f) for f in image_files])
        lowres = np.asarray(first.predict_single_npy_array(img, props, None, None, False))
        written = Path(folder) / f"case{first.dataset_json['file_ending']}"
        reader.write_seg(lowres if previous_stage is None else previous_stage, str(written), props)
        seg_from_file, _ = reader.read_seg(str(written))
        second = predictor(cascade_dir)
        img, props = reader.read_images([str(f) for f in image_files])
        cascade = np.asarray(second.predict_single_npy_array(img, props, seg_from_file, None, False))
    return lowres, cascade

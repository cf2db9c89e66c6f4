"""Train the Tilewise demo model: a real nnU-Net v2 3d_fullres model (5 folds) on the generated brain dataset.

``python tests/demo_model/train.py --raw RAW --work WORK --out resources/demo/model --steps-shared N
--steps-fold M --seed S`` runs, each step only if its result is not already in WORK (so a killed run continues):

1. **plan**: nnU-Net's ``DatasetFingerprintExtractor`` and ``ExperimentPlanner`` on ``RAW/Dataset950_...`` (in
   process, see ``tests/model_factory.py``), with nnU-Net's own knobs turned down for a CPU demo: target spacing
   2 mm isotropic (``overwrite_target_spacing``), ``UNet_base_num_features=8``, ``UNet_max_features_3d=96`` and a
   small VRAM target (``gpu_memory_target_in_gb``, default 0.25) under which the planner picks a 64^3 patch.
   ``splits_final.json`` is nnU-Net's 5-fold split (``generate_crossval_split``: sklearn ``KFold(5, shuffle=True,
   random_state=12345)`` over the sorted case ids), as ``nnUNetTrainer.do_split`` would write it.
2. **preprocess**: every training case through the plans' preprocessor (``DefaultPreprocessor.run_case``:
   transpose, crop to nonzero, z-score, resample to 2 mm), cached as ``WORK/preprocessed/<case>.npz``.
3. **train**: a compact loop instead of ``nnUNetTrainer`` (whose data augmentation pipeline is far too slow on
   two CPU cores): nnU-Net's network (``get_network_from_plans``, deep supervision on), nnU-Net's loss
   (``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss``, batch dice from the plans, wrapped in
   ``DeepSupervisionWrapper`` with nnU-Net's weights), nnU-Net's deep-supervision target downsampling, random
   patches of the plans' patch size with nnU-Net's foreground oversampling (33 %, last sample of the batch), random
   flips on all axes and a random brightness change, SGD (nesterov, momentum 0.99, weight decay 3e-5) with
   nnU-Net's ``PolyLRScheduler``, gradient norm clipped at 12, bf16 autocast (``--precision``).
   First a **shared** model on all training cases (``--steps-shared``), then **fold k** (k = 0..4) starts from the
   shared weights and is fine-tuned on its own split's training cases (``--steps-fold``); its validation cases give
   the pseudo Dice recorded in the checkpoint's logging. State is saved every ``--save-every`` steps.
4. **export**: an nnU-Net trained-model folder (``dataset.json``, ``plans.json``, ``dataset_fingerprint.json``,
   ``fold_k/checkpoint_final.pth``) in ``nnUNetTrainer.save_checkpoint``'s format: ``network_weights`` (float16,
   shared tensors stored once), ``optimizer_state`` (SGD param groups; momentum buffers dropped to keep the file
   small), ``grad_scaler_state`` None, ``logging`` (nnU-Net's logger lists, numpy float64 metrics, one entry per
   pseudo-epoch of ``--epoch-steps`` steps), ``_best_ema``, ``current_epoch``, ``init_args`` (with
   ``torch.device('cpu')``), ``trainer_name`` 'nnUNetTrainer', ``inference_allowed_mirroring_axes`` (0, 1, 2).
   The folder is copied to ``--out`` and the first held-out image to ``--sample`` (default: next to ``--out``).

Prints one line per ``--log-every`` steps (loss, learning rate, elapsed time, ETA).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from copy import deepcopy
from multiprocessing.pool import ThreadPool
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: model_factory
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import model_factory as mf  # noqa: E402
from make_dataset import DATASET_NAME  # noqa: E402

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
PLANS_NAME = "nnUNetPlans"
N_FOLDS = 5
OVERSAMPLE_FOREGROUND = 0.33  # nnUNetTrainer.oversample_foreground_percent
MIRROR_AXES = (0, 1, 2)
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------------
# 1. plan
# --------------------------------------------------------------------------------------------------------------------

def plan(raw: Path, work: Path, vram_gb: float, spacing_mm: float) -> Path:
    """nnU-Net fingerprint + plans + 5-fold split; returns the nnU-Net preprocessed dataset folder."""
    pre = work / "nnUNet_preprocessed" / DATASET_NAME
    if (pre / f"{PLANS_NAME}.json").is_file() and (pre / "splits_final.json").is_file():
        return pre
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor as fe_mod
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.utilities import utils as nnunet_utils
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    t = time.perf_counter()
    with mf._nnunet_env(raw, work / "nnUNet_preprocessed", work / "nnUNet_results"), mf._quiet(), \
            mf._patched_attr(fe_mod, "multiprocessing", mf._InlineMultiprocessing), \
            mf._patched_attr(nnunet_utils, "Pool", ThreadPool):
        fpe = fe_mod.DatasetFingerprintExtractor(DATASET_NAME, num_processes=2, verbose=False)
        fpe.show_progress_bar = False
        fpe.run(overwrite_existing=True)
        planner = ExperimentPlanner(DATASET_NAME, gpu_memory_target_in_gb=vram_gb, plans_name=PLANS_NAME,
                                    overwrite_target_spacing=[float(spacing_mm)] * 3)
        for attr, value in dict(UNet_base_num_features=8, UNet_max_features_3d=96).items():
            if not hasattr(planner, attr):
                raise RuntimeError(f"ExperimentPlanner has no attribute {attr}; nnU-Net changed")
            setattr(planner, attr, value)
        planner.plan_experiment()
    plans = json.loads((pre / f"{PLANS_NAME}.json").read_text())
    ids = sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / DATASET_NAME / "imagesTr").glob("*_0000.nii.gz"))
    splits = generate_crossval_split(ids, seed=12345, n_splits=N_FOLDS)
    mf._write_json([{k: [str(i) for i in v] for k, v in s.items()} for s in splits], pre / "splits_final.json")
    cm = plans["configurations"][CONFIGURATION]
    log(f"planned in {time.perf_counter() - t:.1f} s: patch {cm['patch_size']} batch {cm['batch_size']} spacing "
        f"{cm['spacing']} features {cm['architecture']['arch_kwargs']['features_per_stage']} "
        f"normalisation {cm['normalization_schemes']} mask {cm['use_mask_for_norm']}")
    return pre


def load_plans(pre: Path) -> tuple[dict, dict, dict]:
    return (json.loads((pre / f"{PLANS_NAME}.json").read_text()), json.loads((pre / "dataset.json").read_text()),
            json.loads((pre / "dataset_fingerprint.json").read_text()))


# --------------------------------------------------------------------------------------------------------------------
# 2. preprocess
# --------------------------------------------------------------------------------------------------------------------

def preprocess(raw: Path, work: Path, pre: Path) -> dict[str, dict]:
    plans, dataset_json, _ = load_plans(pre)
    pm, cm, lm, _ = mf._managers(plans, dataset_json, CONFIGURATION)
    out = work / "preprocessed"
    out.mkdir(parents=True, exist_ok=True)
    ds = raw / DATASET_NAME
    ids = sorted(p.name[: -len("_0000.nii.gz")] for p in (ds / "imagesTr").glob("*_0000.nii.gz"))
    cases = {}
    t0 = time.perf_counter()
    for cid in ids:
        f = out / f"{cid}.npz"
        if not f.is_file():
            t = time.perf_counter()
            with mf._quiet():
                preprocessor = cm.preprocessor_class(verbose=False)
                data, seg, props = preprocessor.run_case([str(ds / "imagesTr" / f"{cid}_0000.nii.gz")],
                                                         str(ds / "labelsTr" / f"{cid}.nii.gz"), pm, cm, dataset_json)
            locs = {f"loc_{k}": np.asarray(v, np.int32) for k, v in props["class_locations"].items()}
            tmp = out / f"{cid}.tmp.npz"
            np.savez(tmp, data=data.astype(np.float32), seg=seg.astype(np.int8), **locs)
            os.replace(tmp, f)
            log(f"preprocessed {cid}: {tuple(data.shape[1:])} ({time.perf_counter() - t:.1f} s)")
        z = np.load(f)
        cases[cid] = {"data": z["data"], "seg": z["seg"],
                      "locs": {int(k[4:]): z[k] for k in z.files if k.startswith("loc_") and len(z[k])}}
    log(f"{len(cases)} preprocessed training cases ready ({time.perf_counter() - t0:.1f} s)")
    return cases


# --------------------------------------------------------------------------------------------------------------------
# 3. train
# --------------------------------------------------------------------------------------------------------------------

class Sampler:
    """Random patches as nnU-Net's 3D data loader draws them (foreground oversampling, half-patch padding)."""

    def __init__(self, cases: dict, keys: list[str], patch, batch_size: int):
        self.cases, self.keys, self.patch, self.bs = cases, list(keys), np.array(patch), batch_size

    def _crop(self, case: dict, force_fg: bool, rng: np.random.Generator):
        shape = np.array(case["data"].shape[1:])
        need = np.maximum(self.patch - shape, 0)
        lb = -(need // 2)
        ub = shape + need // 2 + need % 2 - self.patch
        if force_fg and case["locs"]:
            cls = rng.choice(sorted(case["locs"]))
            locs = case["locs"][cls]
            vox = locs[rng.integers(len(locs))][1:]
            start = np.clip(vox - self.patch // 2, lb, ub)
        else:
            start = np.array([rng.integers(lo, hi + 1) for lo, hi in zip(lb, ub)])
        end = start + self.patch
        src = tuple(slice(max(0, s), min(n, e)) for s, e, n in zip(start, end, shape))
        pad = [(max(0, -s), max(0, e - n)) for s, e, n in zip(start, end, shape)]
        data = np.pad(case["data"][(slice(None), *src)], [(0, 0)] + pad)
        seg = np.pad(case["seg"][(slice(None), *src)], [(0, 0)] + pad)
        return data, np.maximum(seg, 0)

    def batch(self, rng: np.random.Generator, augment: bool = True):
        data, seg = [], []
        for j in range(self.bs):
            force_fg = not j < round(self.bs * (1 - OVERSAMPLE_FOREGROUND))
            d, s = self._crop(self.cases[self.keys[rng.integers(len(self.keys))]], force_fg, rng)
            if augment:
                for ax in MIRROR_AXES:
                    if rng.random() < 0.5:
                        d, s = np.flip(d, ax + 1), np.flip(s, ax + 1)
                if rng.random() < 0.15:
                    d = d * rng.uniform(0.75, 1.25)
            data.append(np.ascontiguousarray(d))
            seg.append(np.ascontiguousarray(s))
        return torch.from_numpy(np.stack(data)).float(), torch.from_numpy(np.stack(seg)).to(torch.int16)


class Setup:
    """Network, loss and deep-supervision target maker, all from nnU-Net and the plans."""

    def __init__(self, plans: dict, dataset_json: dict):
        from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        self.plans, self.dataset_json = plans, dataset_json
        self.pm, self.cm, self.lm, self.n_in = mf._managers(plans, dataset_json, CONFIGURATION)
        self.patch = tuple(self.cm.patch_size)
        self.batch_size = int(self.cm.batch_size)
        # nnUNetTrainer._get_deep_supervision_scales and _build_loss
        self.ds_scales = list(list(i) for i in 1 / np.cumprod(np.vstack(self.cm.pool_op_kernel_sizes), axis=0))[:-1]
        loss = DC_and_CE_loss({"batch_dice": self.cm.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                              weight_ce=1, weight_dice=1, ignore_label=self.lm.ignore_label,
                              dice_class=MemoryEfficientSoftDiceLoss)
        weights = np.array([1 / (2 ** i) for i in range(len(self.ds_scales))])
        weights[-1] = 0
        self.loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        self.downsample = DownsampleSegForDSTransform(self.ds_scales)

    def network(self, seed: int) -> torch.nn.Module:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_network_from_plans(self.cm.network_arch_class_name, self.cm.network_arch_init_kwargs,
                                          self.cm.network_arch_init_kwargs_req_import, self.n_in,
                                          self.lm.num_segmentation_heads, allow_init=True, deep_supervision=True)

    def targets(self, seg: torch.Tensor) -> list[torch.Tensor]:
        per_sample = [self.downsample(segmentation=s)["segmentation"] for s in seg]
        return [torch.stack([p[i] for p in per_sample]) for i in range(len(self.ds_scales))]


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _new_logging() -> dict:
    return {k: [] for k in ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses",
                            "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps")}


def validate(setup: Setup, net: torch.nn.Module, val_batches, precision: str) -> tuple[float, list[float]]:
    """nnU-Net's online validation on fixed patches: loss and global pseudo Dice per foreground label."""
    from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
    net.eval()
    n_cls = setup.lm.num_segmentation_heads
    tp, fp, fn = (np.zeros(n_cls - 1) for _ in range(3))
    losses = []
    with torch.no_grad():
        for data, seg in val_batches:
            with _autocast(precision):
                out = net(data)
            out = [o.float() for o in out]
            target = setup.targets(seg)
            losses.append(float(setup.loss(out, target)))
            pred = out[0].argmax(1, keepdim=True)
            onehot = torch.zeros_like(out[0]).scatter_(1, pred, 1)
            t, f_p, f_n, _ = get_tp_fp_fn_tn(onehot, target[0].long(), axes=[0, 2, 3, 4])
            tp += t[1:].numpy()
            fp += f_p[1:].numpy()
            fn += f_n[1:].numpy()
    net.train()
    dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]
    return float(np.mean(losses)), dice


def train_stage(name: str, setup: Setup, cases: dict, train_keys: list[str], val_keys: list[str], steps: int,
                lr: float, init_weights: dict | None, seed: int, args) -> dict:
    """Train (or resume, or reuse) one stage; returns {'weights': fp32 state dict, 'logging': ..., ...}."""
    stage_dir = args.work / "train" / name
    final = stage_dir / "final.pth"
    if final.is_file():
        log(f"[{name}] done before, reusing {final}")
        return torch.load(final, map_location="cpu", weights_only=False)
    state_file = stage_dir / "state.pth"
    net = setup.network(seed)
    if init_weights is not None:
        net.load_state_dict(init_weights)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr, weight_decay=3e-5, momentum=0.99, nesterov=True)
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    sched = PolyLRScheduler(opt, lr, max(steps, 1))
    rng = np.random.default_rng([seed, 1])
    logging, step, ema, recent, epoch_losses = _new_logging(), 0, None, [], []
    epoch_start = time.time()
    trained_s = 0.0
    if state_file.is_file():
        st = torch.load(state_file, map_location="cpu", weights_only=False)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        step, logging, ema, epoch_losses = st["step"], st["logging"], st["ema"], st["epoch_losses"]
        sched.ctr = step
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        trained_s = st.get("trained_s", 0.0)
        epoch_start = st.get("epoch_start", time.time())
        log(f"[{name}] resuming at step {step}/{steps}")
    # fixed validation patches (own generator: the same every epoch and after a resume); batches of one patch
    vrng = np.random.default_rng([seed, 2])
    vsampler = Sampler(cases, val_keys, setup.patch, 1)
    val_batches = []
    for i in range(args.val_patches):
        d, s = vsampler._crop(cases[val_keys[i % len(val_keys)]], i % 2 == 0, vrng)
        val_batches.append((torch.from_numpy(d[None]).float(), torch.from_numpy(s[None]).to(torch.int16)))
    sampler = Sampler(cases, train_keys, setup.patch, setup.batch_size)
    log(f"[{name}] {steps} steps, lr {lr}, {len(train_keys)} training / {len(val_keys)} validation cases, "
        f"batch {setup.batch_size} x {setup.patch}, {args.precision}")
    seg_start = time.perf_counter()
    seg_step0 = step
    while step < steps:
        data, seg = sampler.batch(rng)
        target = setup.targets(seg)
        sched.step(step)
        opt.zero_grad(set_to_none=True)
        with _autocast(args.precision):
            out = net(data)
        loss = setup.loss([o.float() for o in out], target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        step += 1
        lv = float(loss.detach())
        recent.append(lv)
        epoch_losses.append(lv)
        if step % args.log_every == 0 or step == steps:
            el = time.perf_counter() - seg_start
            per = el / max(step - seg_step0, 1)
            log(f"[{name}] step {step}/{steps} loss {np.mean(recent):.4f} lr {opt.param_groups[0]['lr']:.5f} "
                f"{per:.2f} s/step, stage {trained_s + el:.0f} s, eta {per * (steps - step) / 60:.1f} min")
            recent = []
        if step % args.epoch_steps == 0 or step == steps:
            vloss, dice = validate(setup, net, val_batches, args.precision)
            mean = float(np.nanmean(dice))
            ema = mean if ema is None else 0.9 * ema + 0.1 * mean
            logging["mean_fg_dice"].append(np.float64(mean))
            logging["ema_fg_dice"].append(np.float64(ema))
            logging["dice_per_class_or_region"].append([np.float64(d) for d in dice])
            logging["train_losses"].append(np.float64(np.mean(epoch_losses)))
            logging["val_losses"].append(np.float64(vloss))
            logging["lrs"].append(float(opt.param_groups[0]["lr"]))
            logging["epoch_start_timestamps"].append(epoch_start)
            logging["epoch_end_timestamps"].append(time.time())
            epoch_start, epoch_losses = time.time(), []
            log(f"[{name}] epoch {len(logging['lrs'])}: train loss {logging['train_losses'][-1]:.4f} val loss "
                f"{vloss:.4f} pseudo dice {[round(d, 4) for d in dice]} ema {ema:.4f}")
        if step % args.save_every == 0 and step < steps:
            _atomic_save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "logging": logging,
                          "ema": ema, "epoch_losses": epoch_losses, "rng": rng.bit_generator.state,
                          "torch_rng": torch.get_rng_state(), "epoch_start": epoch_start,
                          "trained_s": trained_s + time.perf_counter() - seg_start}, state_file)
    took = trained_s + time.perf_counter() - seg_start
    result = {"weights": {k: v.detach().clone() for k, v in net.state_dict().items()}, "logging": logging,
              "param_groups": opt.state_dict()["param_groups"], "steps": steps, "seconds": took,
              "train_keys": train_keys, "val_keys": val_keys}
    _atomic_save(result, final)
    state_file.unlink(missing_ok=True)
    log(f"[{name}] finished {steps} steps in {took / 60:.1f} min")
    return result


# --------------------------------------------------------------------------------------------------------------------
# 4. export
# --------------------------------------------------------------------------------------------------------------------

def fold_checkpoint(setup: Setup, result: dict, fold: int) -> dict:
    """``nnUNetTrainer.save_checkpoint``'s dict, float16 weights (aliases kept: shared tensors stored once)."""
    net = setup.network(0)
    net.load_state_dict(result["weights"])
    net.half()
    logging = result["logging"]
    best = max(logging["ema_fg_dice"]) if logging["ema_fg_dice"] else np.float64(0.0)
    return {
        "network_weights": net.state_dict(),
        # SGD param groups as nnU-Net's optimizer has them; momentum buffers dropped (they would triple the size)
        "optimizer_state": {"state": {}, "param_groups": deepcopy(result["param_groups"])},
        "grad_scaler_state": None,
        "logging": logging,
        "_best_ema": np.float64(best),
        "current_epoch": len(logging["lrs"]),
        "init_args": {"plans": deepcopy(setup.plans), "configuration": CONFIGURATION, "fold": fold,
                      "dataset_json": deepcopy(setup.dataset_json), "device": torch.device("cpu")},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": MIRROR_AXES,
    }


def export(setup: Setup, fingerprint: dict, results: dict, work: Path, args) -> Path:
    model = work / "model" / f"{TRAINER}__{PLANS_NAME}__{CONFIGURATION}"
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=work))
    tmp.chmod(0o755)
    mf._write_json(setup.dataset_json, tmp / "dataset.json")
    mf._write_json(setup.plans, tmp / "plans.json")
    mf._write_json(fingerprint, tmp / "dataset_fingerprint.json")
    for fold in range(N_FOLDS):
        fd = tmp / f"fold_{fold}"
        fd.mkdir()
        torch.save(fold_checkpoint(setup, results[f"fold_{fold}"], fold), fd / "checkpoint_final.pth")
        r = results[f"fold_{fold}"]
        mf._write_json({"device": "cpu", "torch_version": torch.__version__, "configuration": CONFIGURATION,
                        "fold": fold, "trainer": TRAINER, "seed": args.seed, "precision": args.precision,
                        "steps_shared": results["shared"]["steps"], "steps_fold": r["steps"],
                        "seconds_shared": round(results["shared"]["seconds"], 1), "seconds_fold": round(r["seconds"], 1),
                        "train_keys": list(r["train_keys"]), "val_keys": list(r["val_keys"]),
                        "note": "written by tests/demo_model/train.py (compact training loop, warm-started from a "
                                "shared model trained on all training cases)"}, fd / "debug.json")
        size = (fd / "checkpoint_final.pth").stat().st_size
        log(f"fold_{fold}: checkpoint {size / 1e6:.2f} MB, final pseudo dice "
            f"{[round(float(d), 4) for d in r['logging']['dice_per_class_or_region'][-1]]}")
        if size > 4e6:
            log(f"WARNING: fold_{fold} checkpoint is larger than 4 MB")
    if model.exists():
        shutil.rmtree(model)
    model.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, model)
    return model


def _replace_dir(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.with_name(f".{dst.name}.new")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(src, staging)
    if dst.exists():
        if not (dst / "plans.json").is_file():
            raise SystemExit(f"refusing to replace {dst}: it is not a model folder")
        shutil.rmtree(dst)
    os.replace(staging, dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raw", type=Path, required=True, help="nnUNet_raw folder written by make_dataset.py")
    p.add_argument("--work", type=Path, required=True, help="folder for plans, preprocessed data, training state")
    p.add_argument("--out", type=Path, default=None, help="copy the trained-model folder here (e.g. resources/demo/model)")
    p.add_argument("--sample", type=Path, default=None,
                   help="copy the first held-out image here (default: OUT/../sample_t1.nii.gz when --out is given)")
    p.add_argument("--sample-case", default="heldout_000")
    p.add_argument("--steps-shared", type=int, default=4000)
    p.add_argument("--steps-fold", type=int, default=400)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--lr-shared", type=float, default=1e-2)
    p.add_argument("--lr-fold", type=float, default=3e-3)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--vram-gb", type=float, default=0.25, help="planner VRAM target (chooses the patch size)")
    p.add_argument("--spacing", type=float, default=2.0, help="target spacing in mm (isotropic)")
    p.add_argument("--epoch-steps", type=int, default=50, help="steps per pseudo-epoch (validation + logging)")
    p.add_argument("--val-patches", type=int, default=4)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    args.work = args.work.resolve()
    args.raw = args.raw.resolve()
    if args.threads:
        torch.set_num_threads(args.threads)
    log(f"train.py {' '.join(argv if argv is not None else sys.argv[1:])}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads")

    pre = plan(args.raw, args.work, args.vram_gb, args.spacing)
    plans, dataset_json, fingerprint = load_plans(pre)
    setup = Setup(plans, dataset_json)
    cases = preprocess(args.raw, args.work, pre)
    splits = json.loads((pre / "splits_final.json").read_text())
    ids = sorted(cases)

    results = {"shared": train_stage("shared", setup, cases, ids, ids, args.steps_shared, args.lr_shared, None,
                                     args.seed, args)}
    for fold in range(N_FOLDS):
        results[f"fold_{fold}"] = train_stage(f"fold_{fold}", setup, cases, splits[fold]["train"],
                                              splits[fold]["val"], args.steps_fold, args.lr_fold,
                                              results["shared"]["weights"], args.seed + 1 + fold, args)
    model = export(setup, fingerprint, results, args.work, args)
    log(f"model folder: {model}")
    if args.out is not None:
        out = args.out.resolve()
        _replace_dir(model, out)
        sample = args.sample or out.parent / "sample_t1.nii.gz"
        src = args.raw / DATASET_NAME / "imagesTs" / f"{args.sample_case}_0000.nii.gz"
        shutil.copyfile(src, sample)
        total = sum(f.stat().st_size for f in out.parent.rglob("*") if f.is_file())
        log(f"copied model to {out} and {src.name} to {sample}; {out.parent} holds {total / 1e6:.1f} MB")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Demo dataset: brain tissue cases generated from the MNI ICBM152 2009a template that nilearn ships.

``python tests/demo_model/make_dataset.py --out DIR [--train 20] [--test 4] [--seed 2024]`` writes an nnU-Net v2 raw
dataset folder ``DIR/Dataset950_TilewiseDemoBrain`` (``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``,
``dataset.json``) plus ``DIR/cases.json`` (what was drawn for every case).

Source data (1 mm, skull-stripped, in nilearn's package data)::

    mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz   T1 (uint8, 0 outside the brain)
    mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz   grey matter probability (uint8, 0..255)
    mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz   white matter probability (uint8, 0..255)

Labels on the template (the rule; background 0, grey matter 1, white matter 2, CSF 3):

* ``tissue = gm + wm >= 0.5``; tissue voxels get 1 where ``gm >= wm``, else 2;
* brain envelope ``E = fill_holes(closing(tissue, ball of radius 4 mm)) & (T1 > 0)``: the tissue mask with its
  sulci and ventricles closed and filled, restricted to the template's brain mask;
* CSF 3: voxels of ``E`` that are not tissue and whose T1 is dark, ``T1 < 0.75 * median(T1 where gm > 0.5)``
  (grey matter is the darkest tissue, so this threshold separates fluid from partial-volume tissue);
* voxels of ``E`` that are neither tissue nor dark get the larger of gm / wm (partial-volume tissue);
* everything else is background (including the thin dark rim of the brain mask outside ``E``).

Every case (seeded: ``numpy.random.default_rng([seed, split, index])``) is the template moved through

* a random affine about the brain centre (rotations up to +-12 degrees per axis, scale 0.88-1.12 with up to +-4 %
  per axis, shifts up to +-6 mm) composed with a smooth elastic deformation (cubic B-spline, 5^3 mesh, control
  point displacements N(0, 2.5 mm)),
* sampled on a grid with one of several voxel spacings (1 mm isotropic, 1 x 1 x 3 mm, 1.5 mm, 2 mm, 1.2 x 1.2 x 2 mm)
  after a Gaussian blur that matches the voxel size (partial volume), with a random header orientation (a signed
  permutation of the axes as direction matrix: axis order and flips differ between cases),
* with a smooth multiplicative bias field (exp of a random quadratic, up to about +-25 %), a gamma change
  (0.8-1.25), a random intensity scale (values up to ~600-3000) and Gaussian noise (1-4 % of the white matter
  intensity) inside the brain; the background stays exactly 0 (skull-stripped, as the template).

Labels follow the same geometry: the one-hot label maps are blurred and resampled like the image and the most
likely label is kept. Images are written as int16, labels as uint8, both NIfTI (.nii.gz).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

DATASET_ID = 950
DATASET_NAME = f"Dataset{DATASET_ID:03d}_TilewiseDemoBrain"
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2, "csf": 3}
TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}

# voxel spacings (SimpleITK order: image axes i, j, k) drawn for the cases; the header orientation decides which
# physical axis each image axis runs along, so the 3 mm axis of "1 x 1 x 3" lands on different anatomical axes
SPACINGS = [(2.0, 2.0, 2.0), (1.0, 1.0, 3.0), (1.5, 1.5, 1.5), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (1.2, 1.2, 2.0)]
# the held-out cases: the first one (1 mm isotropic, template orientation) is the shipped sample volume
TEST_SPACINGS = [(1.0, 1.0, 1.0), (1.0, 1.0, 3.0), (2.0, 2.0, 2.0), (1.5, 1.5, 1.5)]

ENVELOPE_RADIUS_MM = 4.0
CSF_T1_FRACTION = 0.75


def template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise SystemExit("nilearn is not installed; it ships the MNI ICBM152 2009a template this script uses")
    return Path(spec.origin).parent / "datasets" / "data"


def _ball(radius_mm: float, spacing) -> np.ndarray:
    r = [int(np.floor(radius_mm / s)) for s in spacing]
    g = np.meshgrid(*[np.arange(-n, n + 1) * s for n, s in zip(r, spacing)], indexing="ij")
    return sum(x ** 2 for x in g) <= radius_mm ** 2 + 1e-6


def template_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, spacing_zyx) -> tuple[np.ndarray, dict]:
    """Label map (uint8, numpy z, y, x) from the template's T1 and gm / wm probabilities (0..1); see module doc."""
    brain = t1 > 0
    tissue = (gm + wm) >= 0.5
    closed = ndi.binary_closing(np.pad(tissue, 8), _ball(ENVELOPE_RADIUS_MM, spacing_zyx))[8:-8, 8:-8, 8:-8]
    envelope = ndi.binary_fill_holes(closed) & brain
    csf_threshold = CSF_T1_FRACTION * float(np.median(t1[gm > 0.5]))
    csf = envelope & ~tissue & (t1 < csf_threshold)
    partial = envelope & ~tissue & ~csf
    labels = np.zeros(t1.shape, np.uint8)
    solid = tissue | partial
    labels[solid & (gm >= wm)] = 1
    labels[solid & (gm < wm)] = 2
    labels[csf] = 3
    stats = {"csf_t1_threshold": csf_threshold, "envelope_voxels": int(envelope.sum()),
             "voxels_per_label": {name: int((labels == v).sum()) for name, v in LABELS.items()}}
    return labels, stats


def load_template() -> dict:
    d = template_dir()
    imgs = {k: sitk.ReadImage(str(d / f)) for k, f in TEMPLATE_FILES.items()}
    arr = {k: sitk.GetArrayFromImage(v).astype(np.float32) for k, v in imgs.items()}
    t1, gm, wm = arr["t1"], arr["gm"] / 255.0, arr["wm"] / 255.0
    ref = imgs["t1"]
    labels, stats = template_labels(t1, gm, wm, ref.GetSpacing()[::-1])
    t1_img = sitk.GetImageFromArray(t1)
    t1_img.CopyInformation(ref)
    onehot = []
    for v in LABELS.values():
        im = sitk.GetImageFromArray((labels == v).astype(np.float32))
        im.CopyInformation(ref)
        onehot.append(im)
    # brain bounding box and centre in physical coordinates
    idx = np.argwhere(labels > 0)  # (z, y, x)
    lo, hi = idx.min(0), idx.max(0)
    corners = [ref.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])])
               for c in np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T]
    centre = ref.TransformContinuousIndexToPhysicalPoint([float(c) for c in idx.mean(0)[::-1]])
    wm_t1 = float(np.median(t1[labels == 2]))
    return {"t1": t1_img, "onehot": onehot, "corners": np.array(corners), "centre": np.array(centre),
            "wm_t1": wm_t1, "stats": stats, "files": {k: str(d / f) for k, f in TEMPLATE_FILES.items()}}


def _direction(rng: np.random.Generator, identity: bool) -> np.ndarray:
    if identity:
        return np.diag([-1.0, -1.0, 1.0])  # the template's own header orientation
    perm = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], 3)
    d = np.zeros((3, 3))
    for col, (axis, sign) in enumerate(zip(perm, signs)):
        d[axis, col] = sign  # image axis `col` runs along physical axis `axis`
    return d


def _rotation(angles) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_case(tpl: dict, rng: np.random.Generator, spacing, identity_orientation: bool = False,
              mild: bool = False) -> tuple[sitk.Image, sitk.Image, dict]:
    """One generated case: (int16 T1 image, uint8 label image, parameters)."""
    amount = 0.5 if mild else 1.0
    spacing = np.asarray(spacing, float)
    direction = _direction(rng, identity_orientation)
    # --- spatial transform: output point -> template point (SimpleITK resampling convention)
    angles = np.deg2rad(rng.uniform(-12, 12, 3) * amount)
    scale = rng.uniform(1 - 0.12 * amount, 1 + 0.12 * amount) * (1 + rng.uniform(-0.04, 0.04, 3) * amount)
    shift = rng.uniform(-6, 6, 3) * amount
    # brain in the output = template brain scaled by `scale` and rotated: the inverse map uses 1/scale
    matrix = np.diag(1.0 / scale) @ _rotation(angles).T
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(tpl["centre"]))
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetTranslation(tuple(shift))
    ref_t1 = tpl["t1"]
    bspline = sitk.BSplineTransformInitializer(ref_t1, [5, 5, 5], 3)
    params = rng.normal(0.0, 2.5 * amount, len(bspline.GetParameters()))
    bspline.SetParameters(tuple(params))
    transform = sitk.CompositeTransform([affine, bspline])  # the B-spline is applied first, then the affine

    # --- output grid: covers the moved brain (inverse affine of the template brain box) with a margin
    inv = affine.GetInverse()
    moved = np.array([inv.TransformPoint(tuple(c)) for c in tpl["corners"]])
    local = moved @ direction  # coordinates along the output image axes
    margin = 10.0
    lo, hi = local.min(0) - margin, local.max(0) + margin
    size = [int(np.ceil((h - lw) / s)) + 1 for lw, h, s in zip(lo, hi, spacing)]
    origin = direction @ lo
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(tuple(spacing))
    ref.SetOrigin(tuple(origin))
    ref.SetDirection(tuple(direction.ravel()))

    # partial volume: blur the 1 mm template to the output voxel size (sigma per template axis)
    phys_spacing = np.abs(direction) @ spacing  # voxel size along each physical axis (template axes)
    sigma = [0.42 * float(np.sqrt(max(s * s - 1.0, 0.0))) for s in phys_spacing]

    def smooth(img):
        if max(sigma) <= 0:
            return img
        # scipy takes per-axis sigmas in voxels (zero allowed), in numpy (z, y, x) order; the template is 1 mm
        vox = [sg / sp for sg, sp in zip(sigma[::-1], img.GetSpacing()[::-1])]
        out = sitk.GetImageFromArray(ndi.gaussian_filter(sitk.GetArrayViewFromImage(img), vox, truncate=3.0))
        out.CopyInformation(img)
        return out

    t1 = sitk.GetArrayFromImage(sitk.Resample(smooth(ref_t1), ref, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    probs = np.stack([sitk.GetArrayFromImage(sitk.Resample(smooth(oh), ref, transform, sitk.sitkLinear, 0.0,
                                                           sitk.sitkFloat32)) for oh in tpl["onehot"]])
    labels = probs.argmax(0).astype(np.uint8)
    brain = probs[1:].sum(0) >= 0.5
    labels[~brain] = 0
    mask = t1 > 0.02 * tpl["wm_t1"]

    # --- intensities: bias field, gamma, scale, noise (inside the brain; background stays 0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in t1.shape], indexing="ij")
    coef = rng.normal(0, 0.12 * amount, 9)
    log_bias = (coef[0] * zz + coef[1] * yy + coef[2] * xx + coef[3] * zz * yy + coef[4] * yy * xx
                + coef[5] * zz * xx + coef[6] * zz ** 2 + coef[7] * yy ** 2 + coef[8] * xx ** 2)
    bias = np.exp(np.clip(log_bias, -0.35, 0.35)).astype(np.float32)
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)) * amount))
    rel = np.clip(t1 / tpl["wm_t1"], 0, None) ** gamma * bias
    scale_out = float(rng.uniform(600, 3000))
    noise_sd = float(rng.uniform(0.01, 0.04 if not mild else 0.02))
    img = rel * scale_out + rng.normal(0.0, noise_sd * scale_out, t1.shape).astype(np.float32)
    img = np.where(mask, np.clip(img, 1.0, 32000.0), 0.0)
    labels[~mask] = 0
    out_img = sitk.GetImageFromArray(np.round(img).astype(np.int16))
    out_img.CopyInformation(ref)
    out_lab = sitk.GetImageFromArray(labels)
    out_lab.CopyInformation(ref)
    info = {"spacing": spacing.tolist(), "size": size, "direction": direction.ravel().tolist(),
            "rotation_deg": np.rad2deg(angles).round(2).tolist(), "scale": scale.round(4).tolist(),
            "shift_mm": shift.round(2).tolist(), "bspline_sd_mm": 2.5 * amount, "gamma": round(gamma, 4),
            "intensity_scale": round(scale_out, 1), "noise_sd_rel": round(noise_sd, 4),
            "bias_coefficients": coef.round(4).tolist(),
            "voxels_per_label": {n: int((labels == v).sum()) for n, v in LABELS.items()}}
    return out_img, out_lab, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the raw dataset (nnUNet_raw)")
    p.add_argument("--train", type=int, default=20, help="number of training cases")
    p.add_argument("--test", type=int, default=4, help="number of held-out cases (the first is the sample)")
    p.add_argument("--seed", type=int, default=2024)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    ds = args.out / DATASET_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    tpl = load_template()
    print(f"template labels: {json.dumps(tpl['stats'])}", flush=True)
    cases = {}
    jobs = [("train", i, SPACINGS[i % len(SPACINGS)]) for i in range(args.train)]
    jobs += [("test", i, TEST_SPACINGS[i % len(TEST_SPACINGS)]) for i in range(args.test)]
    for split, i, spacing in jobs:
        name = f"brain_{i:03d}" if split == "train" else f"heldout_{i:03d}"
        img_dir, lab_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
        img_path, lab_path = ds / img_dir / f"{name}_0000.nii.gz", ds / lab_dir / f"{name}.nii.gz"
        if img_path.is_file() and lab_path.is_file() and (ds / f".{name}.done").is_file():
            cases[name] = json.loads((ds / f".{name}.done").read_text())
            continue
        t = time.perf_counter()
        rng = np.random.default_rng([args.seed, 0 if split == "train" else 1, i])
        sample = split == "test" and i == 0
        img, lab, info = make_case(tpl, rng, spacing, identity_orientation=sample, mild=sample)
        sitk.WriteImage(img, str(img_path), True)
        sitk.WriteImage(lab, str(lab_path), True)
        info["split"] = split
        (ds / f".{name}.done").write_text(json.dumps(info))
        cases[name] = info
        print(f"{name}: spacing {info['spacing']} size {info['size']} "
              f"({time.perf_counter() - t:.1f} s, {time.perf_counter() - t0:.0f} s total)", flush=True)

    dataset_json = {
        "channel_names": {"0": "T1"},
        "labels": LABELS,
        "numTraining": args.train,
        "file_ending": ".nii.gz",
        "name": DATASET_NAME.split("_", 1)[1],
        "description": "Tilewise demo: brain tissue (grey matter, white matter, CSF) on skull-stripped T1 volumes "
                       "generated from the MNI ICBM152 2009a symmetric template (nilearn's copy) with random "
                       "affine + elastic deformation, bias field, intensity changes, noise, voxel spacings and "
                       "header orientations. See tests/demo_model/ in the Tilewise repository.",
        "reference": "Fonov et al., NeuroImage 47 (2009) S102 and 54 (2011) 313-327; Collins et al. 1999",
        "licence": "Template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
                   "Neurological Institute, McGill University (see LICENSE-MNI-ICBM152.txt)",
        "tilewise_generator": {"seed": args.seed, "train": args.train, "test": args.test,
                               "label_rule": {"envelope_radius_mm": ENVELOPE_RADIUS_MM,
                                              "csf_t1_fraction_of_gm_median": CSF_T1_FRACTION}},
    }
    (ds / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    (args.out / "cases.json").write_text(json.dumps({"seed": args.seed, "template": tpl["files"],
                                                     "template_stats": tpl["stats"], "cases": cases}, indent=1))
    print(f"wrote {ds} ({args.train} training, {args.test} held-out cases) in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

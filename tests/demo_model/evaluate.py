"""Dice per label of the demo model on the held-out cases, predicted through Tilewise's engine.

``python tests/demo_model/evaluate.py --raw RAW --model resources/demo/model --preset balanced`` predicts every
``RAW/Dataset950_TilewiseDemoBrain/imagesTs/*_0000.nii.gz`` with ``tilewise.engine.Predictor(model, get_preset(p),
device=...)`` and compares with ``labelsTs``. ``--against-nnunet`` also runs nnU-Net's own ``nnUNetPredictor`` with the
same folds / mirroring / step (``tests/model_factory.nnunet_reference``) and reports its Dice and the voxel agreement.
Prints a table; ``--json`` writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from make_dataset import DATASET_NAME, LABELS  # noqa: E402


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    denom = int(p.sum()) + int(r.sum())
    return float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, required=True, help="nnUNet_raw folder written by make_dataset.py")
    ap.add_argument("--model", type=Path, required=True, help="trained-model folder (e.g. resources/demo/model)")
    ap.add_argument("--preset", default="balanced", help="Tilewise preset: reference, balanced, fast, preview")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--against-nnunet", action="store_true", help="also predict with nnU-Net's nnUNetPredictor")
    ap.add_argument("--write", type=Path, default=None, help="write the predicted label maps here")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from tilewise.engine import Predictor, get_preset, read_volume, write_labels

    ds = args.raw / DATASET_NAME
    images = sorted((ds / "imagesTs").glob("*_0000.nii.gz"))
    if not images:
        raise SystemExit(f"no held-out images in {ds / 'imagesTs'}")
    preset = get_preset(args.preset)
    t = time.perf_counter()
    predictor = Predictor(args.model, preset, device=args.device)
    load_s = time.perf_counter() - t
    s = predictor.settings
    print(f"model {args.model}: preset {args.preset} (folds {s.folds}, mirror axes {s.mirror_axes}, step "
          f"{s.tile_step}, {s.precision}); loaded in {load_s:.1f} s", flush=True)
    fg = {name: v for name, v in LABELS.items() if v != 0}
    rows = []
    for img in images:
        case = img.name[: -len("_0000.nii.gz")]
        ref_img = sitk.ReadImage(str(ds / "labelsTs" / f"{case}.nii.gz"))
        ref = sitk.GetArrayFromImage(ref_img)
        volume = read_volume(img)
        t = time.perf_counter()
        result = predictor.predict(volume)
        took = time.perf_counter() - t
        pred = np.asarray(result.labels)
        row = {"case": case, "spacing": list(ref_img.GetSpacing()), "size": list(ref_img.GetSize()),
               "direction": [round(d, 3) for d in ref_img.GetDirection()], "seconds": round(took, 2),
               "tiles": result.tiles, "dice": {n: dice(pred, ref, v) for n, v in fg.items()}}
        row["mean_dice"] = float(np.nanmean(list(row["dice"].values())))
        if args.write is not None:
            write_labels(pred, volume.geometry, args.write / f"{case}.nii.gz")
        if args.against_nnunet:
            import model_factory as mf
            t = time.perf_counter()
            folds = tuple(int(f.split("_")[-1]) if isinstance(f, str) else int(f) for f in s.folds)
            nn = mf.nnunet_reference(args.model, [img], folds=folds, step=s.tile_step,
                                     mirroring=bool(s.mirror_axes))
            row["nnunet_seconds"] = round(time.perf_counter() - t, 2)
            row["nnunet_dice"] = {n: dice(nn, ref, v) for n, v in fg.items()}
            row["agreement_with_nnunet"] = float((nn == pred).mean())
        rows.append(row)
        extra = ""
        if args.against_nnunet:
            extra = (f"  nnU-Net {row['nnunet_seconds']:.1f} s dice "
                     f"{' '.join(f'{d:.3f}' for d in row['nnunet_dice'].values())} "
                     f"agreement {row['agreement_with_nnunet']:.4f}")
        print(f"{case}: spacing {row['spacing']} {took:6.1f} s  " +
              "  ".join(f"{n} {d:.3f}" for n, d in row["dice"].items()) + f"  mean {row['mean_dice']:.3f}" + extra,
              flush=True)
    summary = {n: float(np.nanmean([r["dice"][n] for r in rows])) for n in fg}
    summary["mean"] = float(np.nanmean([r["mean_dice"] for r in rows]))
    print("mean over held-out cases: " + "  ".join(f"{n} {d:.3f}" for n, d in summary.items()), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(args.model), "preset": args.preset,
                                         "settings": {"folds": [str(f) for f in s.folds],
                                                      "mirror_axes": list(s.mirror_axes),
                                                      "tile_step": s.tile_step, "precision": s.precision},
                                         "cases": rows, "mean": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

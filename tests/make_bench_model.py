"""Build (or reuse) the benchmark model and case: ``python tests/make_bench_model.py OUT_DIR [--seed N]``.

A realistic-size nnU-Net v2 3d_fullres model (nnU-Net's default planner and network, 80^3 patch, about 16.5 M
parameters, float16 random weights with decisive heads, fold_0) plus a 160^3 CT-like case at 1.5 mm, written as
``OUT_DIR/bench_ct_0000.nii.gz``. See ``model_factory.make_bench_model``. Not used by the test suite.

Check it with nnU-Net itself (minutes on a CPU)::

    nnUNetv2_predict_from_modelfolder -i OUT_DIR -o PRED_DIR -m MODEL_DIR -f 0 --disable_tta -device cpu \\
        -step_size 0.5
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import model_factory as mf  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder for the model (under tilewise_models/) and the case")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (the case is the same for every seed)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_dir, case = mf.make_bench_model(args.out_dir.resolve(), seed=args.seed)
    took = time.perf_counter() - t0

    plans = json.loads((model_dir / "plans.json").read_text())
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    info = mf.model_info(model_dir)
    net = mf._build_network(plans, dataset_json, info["configuration"], 0)
    n_params = sum(p.numel() for p in net.parameters())
    ckpt = model_dir / "fold_0" / "checkpoint_final.pth"
    print(f"model folder:     {model_dir}")
    print(f"configuration:    {info['configuration']}  ({info['network']}, features {info['features_per_stage']})")
    print(f"patch size:       {'x'.join(str(p) for p in info['patch_size'])}")
    print(f"parameters:       {n_params:,}")
    print(f"checkpoint:       {ckpt}  ({ckpt.stat().st_size / 1e6:.1f} MB)")
    print(f"case:             {case}")
    print(f"built or reused in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

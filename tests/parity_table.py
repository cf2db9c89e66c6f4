"""The README's parity table: ``python tests/parity_table.py -m MODEL -i CASE_0000.nii.gz [-f 0] [--disable_tta]``.

For one case, label maps from four runs, all on the CPU with PyTorch:

- nnU-Net's own predictor (``nnUNetPredictor``, float16 sums: what ``nnUNetv2_predict_from_modelfolder`` writes);
- nnU-Net's algorithm with float32 sums (the same predictor with its two sums made float32);
- Tilewise ``reference`` (with the given folds and mirroring) and Tilewise ``--nnunet-exact``.

Prints the voxel agreement and the minimum Dice over labels of each Tilewise run against each nnU-Net run, and a
JSON line. Not part of the test suite (the suite checks the same properties on small models: test_parity.py,
test_nnunet_exact.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import model_factory  # noqa: E402
from tilewise.engine import Predictor, get_preset, read_volume  # noqa: E402
from tilewise.engine.commands.metrics import dice_per_label  # noqa: E402
from tilewise.engine.model.bundle import resolve_model_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", dest="model", required=True)
    parser.add_argument("-i", dest="inputs", nargs="+", type=Path, required=True)
    parser.add_argument("-f", dest="folds", nargs="+", default=None)
    parser.add_argument("--disable_tta", action="store_true")
    args = parser.parse_args(argv)
    model = resolve_model_dir(args.model)
    mirroring = not args.disable_tta
    preset = get_preset("reference").with_overrides(mirroring=mirroring, backend="torch")
    volume = read_volume(args.inputs)
    runs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, exact in (("reference", False), ("nnunet_exact", True)):
        predictor = Predictor(model, preset, device="cpu", folds=args.folds, nnunet_exact=exact)
        started = time.perf_counter()
        runs[name] = predictor.predict(volume).labels
        seconds[name] = time.perf_counter() - started
        folds = predictor.settings.folds
    for name, float32 in (("nnunet", False), ("nnunet_float32_sums", True)):
        started = time.perf_counter()
        runs[name] = model_factory.nnunet_reference(model, args.inputs, folds=tuple(folds), step=0.5,
                                                    mirroring=mirroring, float32_sums=float32)
        seconds[name] = time.perf_counter() - started
    table = {}
    for ours in ("reference", "nnunet_exact"):
        for theirs in ("nnunet", "nnunet_float32_sums"):
            agreement = float((runs[ours] == runs[theirs]).mean())
            differing = int((runs[ours] != runs[theirs]).sum())
            dice = dice_per_label(runs[ours], runs[theirs])
            table[f"{ours}_vs_{theirs}"] = {"voxel_agreement": agreement, "voxels_differing": differing,
                                            "dice_min": min(dice.values()) if dice else 1.0}
            print(f"{ours:>13} vs {theirs:<20} agreement {agreement:.7f} ({differing} of {runs[ours].size} voxels "
                  f"differ), min Dice {table[f'{ours}_vs_{theirs}']['dice_min']:.5f}")
    print(json.dumps({"model": str(model), "folds": folds, "mirroring": mirroring, "seconds": seconds, **table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

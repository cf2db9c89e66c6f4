"""Compare label maps pairwise: the installed Windows app's against a reference engine's, same backend and settings.

    python installer/compare_labels.py APP.nii.gz REFERENCE.nii.gz [APP2 REFERENCE2 ...]

Prints, for each pair, how many voxels differ and the Dice of each label. Passes when the geometry matches, at
least 99.9 % of voxels agree and every label's Dice is at least 0.999: the tolerance the main README states for
OpenVINO's rounding against PyTorch's (the same backend on two operating systems runs different kernels and
thread splits, so the last bits of a logit may differ). Identical maps print "identical".
"""
from __future__ import annotations

import sys

MIN_AGREEMENT = 0.999
MIN_DICE = 0.999


def compare(app_path: str, reference_path: str) -> list[str]:
    import numpy as np
    import SimpleITK as sitk

    app_image, reference_image = sitk.ReadImage(app_path), sitk.ReadImage(reference_path)
    errors = []
    for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        a, b = getattr(app_image, what)(), getattr(reference_image, what)()
        if not np.allclose(a, b, atol=1e-5):
            errors.append(f"{what[3:].lower()} differs: {a} vs {b}")
    if errors:
        return errors
    app, reference = sitk.GetArrayViewFromImage(app_image), sitk.GetArrayViewFromImage(reference_image)
    differ = int(np.count_nonzero(app != reference))
    agreement = 1.0 - differ / app.size
    dice = {}
    for label in sorted((set(np.unique(app).tolist()) | set(np.unique(reference).tolist())) - {0}):
        a, b = app == label, reference == label
        total = int(a.sum() + b.sum())
        dice[label] = 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0
    summary = ", ".join(f"{label}: {value:.5f}" for label, value in dice.items())
    verdict = "identical" if differ == 0 else f"{differ} of {app.size} voxels differ ({100 * agreement:.4f} % agree)"
    print(f"{app_path} vs {reference_path}: {verdict}; Dice per label {summary}")
    if agreement < MIN_AGREEMENT:
        errors.append(f"only {100 * agreement:.4f} % of voxels agree (at least {100 * MIN_AGREEMENT} % required)")
    errors += [f"label {label}: Dice {value:.5f} < {MIN_DICE}" for label, value in dice.items() if value < MIN_DICE]
    return errors


def main(argv: list[str]) -> int:
    if not argv or len(argv) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for app_path, reference_path in zip(argv[::2], argv[1::2]):
        for error in compare(app_path, reference_path):
            print(f"MISMATCH {app_path}: {error}", file=sys.stderr)
            failed = True
    print("labels agree" if not failed else "labels DISAGREE")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

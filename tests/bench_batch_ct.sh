#!/usr/bin/env bash
# Batch throughput against nnU-Net (README, "Batch"): 8 distinct CT-sized cases (the bench CT flipped, shifted and
# with its own noise each) with the CT-sized random-weight bench network, identical settings (fold 0, no mirroring,
# step 0.5), on the CPU. Usage: tests/bench_batch_ct.sh [WORKDIR] [extra tilewise bench flags, e.g. --precision bf16]
set -euo pipefail
work=${1:-/tmp/bench}; shift || true
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$work/bench_ct_0000.nii.gz" ] || python "$here/make_bench_model.py" "$work"
model=$(ls -d "$work"/tilewise_models/*/bench__seed-0/nnUNet_results/*/nnUNetTrainer__nnUNetPlans__3d_fullres | head -1)
python - "$work" <<'PY'
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

work = Path(sys.argv[1])
source = sitk.ReadImage(str(work / "bench_ct_0000.nii.gz"))
array = sitk.GetArrayFromImage(source).astype(np.float32)
cases = work / "batch_cases"
cases.mkdir(exist_ok=True)
for k in range(8):
    rng = np.random.default_rng(k)
    variant = np.flip(array, axis=tuple(a for a in range(3) if (k >> a) & 1))
    variant = np.roll(variant, shift=(4 * k, -3 * k, 2 * k), axis=(0, 1, 2))
    variant = variant + rng.normal(0, 15, variant.shape).astype(np.float32)
    image = sitk.GetImageFromArray(variant.astype(np.int16))
    image.CopyInformation(source)
    sitk.WriteImage(image, str(cases / f"ct{k}_0000.nii.gz"), True)
PY
tilewise bench --batch -m "$model" -i "$work/batch_cases" -f 0 --disable_tta -step_size 0.5 -device cpu "$@"

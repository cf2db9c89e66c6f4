"""Write the trained-model benchmark volume: four copies of the demo sample side by side (194 x 438 x 374 at 1 mm).

``python tests/make_mosaic.py /tmp/mosaic`` writes ``/tmp/mosaic/mosaic_0000.nii.gz``: a 2 x 2 in-plane mosaic of
``resources/demo/sample_t1.nii.gz`` (the right-hand copies mirrored left-right, so neighbouring brains meet at the
same hemisphere), with the sample's spacing, origin and direction. It is the volume of the README's "Trained
model" benchmark rows: big enough (60 tiles at 2 mm) that start-up does not dominate, and segmented by a model
trained for it, so reduced precision is judged on real logit margins.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tilewise.resources import sample_path


def mosaic_of(sample: sitk.Image) -> sitk.Image:
    """The 2 x 2 (y, x) mosaic of ``sample``; right-hand copies mirrored along x; the sample's geometry."""
    array = sitk.GetArrayFromImage(sample)
    row = np.concatenate([array, array[:, :, ::-1]], axis=2)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.concatenate([row, row], axis=1)))
    image.SetSpacing(sample.GetSpacing())
    image.SetOrigin(sample.GetOrigin())
    image.SetDirection(sample.GetDirection())
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder to write mosaic_0000.nii.gz into")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    target = args.output / "mosaic_0000.nii.gz"
    sitk.WriteImage(mosaic_of(sitk.ReadImage(str(sample_path()))), str(target), True)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

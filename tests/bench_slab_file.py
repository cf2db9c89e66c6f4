"""Speed of label files written slab by slab: ``python tests/bench_slab_file.py [--levels 1 2 3 4 6]``.

A synthetic CT-sized label map (512 x 512 x 200 uint8, 104 blob-shaped labels covering about 17 % of a body
outline, the rest background, as a whole-body segmentation looks) is written in 10-row slabs by
:class:`~tilewise.engine.data.slab_file.SlabLabelFile` in each format, then whole by ``write_labels`` (SimpleITK)
for comparison; then zlib alone compresses the same slabs at several levels (one core's CPU time). Prints one JSON
line per measurement: MB/s of voxels (wall time, best of ``--repeats``) and the file's size. Not part of the test
suite (timing claims belong in benchmarks).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage
from tilewise.engine.data import slab_file
from tilewise.engine.data.slab_file import SlabLabelFile
from tilewise.engine.data.volume import Geometry
from tilewise.engine.data.writers import write_labels

SHAPE = (200, 512, 512)
ROWS = 10


def organ_labels() -> np.ndarray:
    """104 blobs (nearest of 104 seeds within 30 mm) inside an elliptic body outline; background elsewhere."""
    rng = np.random.default_rng(0)
    z, y, x = SHAPE
    seeds = np.zeros(SHAPE, np.int32)
    points = np.stack([rng.integers(0, z, 104), rng.integers(100, 412, 104), rng.integers(60, 452, 104)], 1)
    seeds[tuple(points.T)] = np.arange(1, 105)
    distance, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=(1.5, 0.8, 0.8), return_indices=True)
    labels = seeds[tuple(nearest)].astype(np.uint8)
    _, yy, xx = np.ogrid[:1, :y, :x]
    outside = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 >= 1
    labels[(distance > 30) | np.broadcast_to(outside, SHAPE)] = 0
    return labels


def best_of(repeats: int, clock, run, *args) -> float:
    """The shortest of ``repeats`` runs of ``run(*args)`` by ``clock``."""
    times = []
    for _ in range(repeats):
        start = clock()
        run(*args)
        times.append(clock() - start)
    return min(times)


def write_slab_wise(path: Path, labels: np.ndarray, geometry: Geometry) -> None:
    with SlabLabelFile(path, geometry, np.uint8, labels.shape) as out:
        for start in range(0, labels.shape[0], ROWS):
            out.write(labels[start:start + ROWS])


def compress(labels: np.ndarray, level: int) -> None:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    for start in range(0, labels.shape[0], ROWS):
        compressor.compress(labels[start:start + ROWS].data)
    compressor.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 2, 3, 4, 6])
    args = parser.parse_args()
    labels = organ_labels()
    megabytes = labels.nbytes / 1e6
    print(json.dumps({"voxels_MB": megabytes, "labels": int(labels.max()), "labelled": float((labels > 0).mean())}))
    geometry = Geometry(SHAPE[::-1], (0.8, 0.8, 1.5), (-200.0, -200.0, 100.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".nii.gz", ".nrrd", ".mha", ".nii"):
            for writer, path, run in (("slab by slab", Path(folder) / f"slabs{suffix}", write_slab_wise),
                                      ("write_labels (whole)", Path(folder) / f"whole{suffix}",
                                       lambda path, labels, geometry: write_labels(labels, geometry, path))):
                seconds = best_of(args.repeats, time.perf_counter, run, path, labels, geometry)
                print(json.dumps({"writer": writer, "format": suffix, "MB_per_s": round(megabytes / seconds),
                                  "file_MB": round(path.stat().st_size / 1e6, 2)}))
    for level in args.levels:
        seconds = best_of(args.repeats, time.process_time, compress, labels, level)
        print(json.dumps({"zlib_level": level, "MB_per_s_cpu": round(megabytes / seconds),
                          "compressed_MB": round(len(zlib.compress(labels.data, level)) / 1e6, 2),
                          "chosen": level == slab_file.COMPRESSION_LEVEL}))

if __name__ == "__main__":
    main()

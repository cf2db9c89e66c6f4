"""A label file's rows written on a thread of their own (:class:`RowWriter`): the same file as written directly, an
error of the writer raised on the caller's thread, and nothing left under the name when it fails or is stopped."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tilewise.engine.data.row_writer import RowWriter
from tilewise.engine.data.slab_file import SlabLabelFile
from tilewise.engine.data.volume import Geometry

SHAPE = (30, 24, 20)
GEOMETRY = Geometry(SHAPE[::-1], (0.8, 0.8, 2.0), (1.0, -2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _labels() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 9, size=SHAPE, dtype=np.uint8)


def test_rows_written_on_the_writers_thread_make_the_same_file(tmp_path: Path) -> None:
    labels = _labels()
    writer = RowWriter(SlabLabelFile(tmp_path / "labels.nii.gz", GEOMETRY, np.uint8, SHAPE))
    for start in range(0, SHAPE[0], 4):
        writer.write(labels[start:start + 4].copy())
    writer.commit()
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz"))), labels)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def test_a_failed_write_is_raised_to_the_caller_and_leaves_no_file(tmp_path: Path) -> None:
    writer = RowWriter(SlabLabelFile(tmp_path / "labels.nrrd", GEOMETRY, np.uint8, SHAPE))
    writer.write(_labels()[:5])
    writer.write(np.zeros((2, 7, 7), dtype=np.uint8))  # the wrong shape: the file refuses it on the writer's thread
    with pytest.raises(ValueError, match="does not fit"):
        for _ in range(50):  # raised by a later call, once the writer has reached the bad block
            writer.write(np.zeros((0, *SHAPE[1:]), dtype=np.uint8))
        writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_stopped_writer_leaves_nothing(tmp_path: Path) -> None:
    writer = RowWriter(SlabLabelFile(tmp_path / "labels.mha", GEOMETRY, np.uint8, SHAPE))
    writer.write(_labels()[:10])
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="already committed or abandoned"):
        writer.commit()

"""Label files written slab by slab (SlabLabelFile): each format reads back with the voxels and the geometry that
write_labels gives, a wrong slab or an abort leaves nothing, a full disk is one exit-3 error, and memory stays at a
few slabs however large the volume."""
from __future__ import annotations

import errno
import gzip
import itertools
import json
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fault_disks import IS_ROOT, assert_not_written, inject_full_disk, small_tmpfs
from tilewise.engine.data import slab_file
from tilewise.engine.data.slab_file import SlabLabelFile, writes_slab_wise
from tilewise.engine.data.volume import Geometry
from tilewise.engine.data.writers import write_labels
from tilewise.engine.errors import DiskSpaceError, WriteError

FORMATS = (".nii", ".nii.gz", ".nrrd", ".mha")
SHAPE = (40, 64, 48)  # (z, y, x)
CUTS = (0, 7, 8, 21, 40)  # uneven slabs: 7 rows, 1 row, 13 rows, 19 rows


def _oblique_flipped() -> tuple[float, ...]:
    """A rotation about three axes times a flip of y (determinant -1), row-major."""
    def turn(axis: int, degrees: float) -> np.ndarray:
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [k for k in range(3) if k != axis]
        matrix = np.eye(3)
        matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
        return matrix
    return tuple((turn(0, 20) @ turn(1, -35) @ turn(2, 50) @ np.diag([1, -1, 1])).ravel())


GEOMETRY = Geometry(SHAPE[::-1], (0.7, 1.3, 2.5), (-12.5, 30.25, -400.125), _oblique_flipped())


def organ_labels(count: int = 9, dtype: type = np.uint8, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Blobs of ``count - 1`` labels on background (as a segmentation looks), every label present."""
    rng = np.random.default_rng(count)
    grid = np.indices(shape).reshape(3, -1).T
    centres = rng.uniform(0, shape, (count - 1, 3))
    nearest = np.argmin(((grid[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    labels = (nearest + 1).astype(dtype).reshape(shape)
    labels[rng.random(shape) < 0.3] = 0
    return labels


def write_in_slabs(path: Path, labels: np.ndarray, geometry: Geometry = GEOMETRY) -> None:
    with SlabLabelFile(path, geometry, labels.dtype, labels.shape) as out:
        for start, stop in itertools.pairwise(CUTS):
            out.write(labels[start:stop])


def geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def header_and_data(path: Path) -> tuple[list[str], bytes]:
    """A file's header (NIfTI: its bytes; NRRD and MetaImage: its lines, the compressed size left out) and its
    voxel bytes, decompressed."""
    raw = path.read_bytes()
    if path.name.endswith(".nii.gz"):
        raw = gzip.decompress(raw)
    if ".nii" in path.name:
        return [raw[:352].hex()], raw[352:]
    if path.suffix == ".nrrd":
        end = raw.index(b"\n\n") + 2
        return raw[:end].decode().splitlines(), gzip.decompress(raw[end:])
    end = raw.index(b"\n", raw.index(b"ElementDataFile")) + 1
    lines = [line for line in raw[:end].decode().splitlines() if not line.startswith("CompressedDataSize")]
    return lines, zlib.decompress(raw[end:])


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("count, dtype", [(9, np.uint8), (300, np.uint16)], ids=("uint8", "uint16"))
def test_each_format_reads_back_as_write_labels_writes_it(tmp_path: Path, suffix: str, count: int,
                                                          dtype: type) -> None:
    labels = organ_labels(count, dtype)
    assert len(np.unique(labels)) == count
    write_in_slabs(tmp_path / f"slabs{suffix}", labels)
    write_labels(labels, GEOMETRY, tmp_path / f"whole{suffix}")
    slabs, whole = (sitk.ReadImage(str(tmp_path / f"{name}{suffix}")) for name in ("slabs", "whole"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(slabs), labels)
    assert slabs.GetPixelID() == whole.GetPixelID() == (sitk.sitkUInt8 if dtype == np.uint8 else sitk.sitkUInt16)
    assert geometry_of(slabs).same_as(geometry_of(whole)) and geometry_of(slabs).same_as(GEOMETRY)
    slab_header, slab_data = header_and_data(tmp_path / f"slabs{suffix}")
    whole_header, whole_data = header_and_data(tmp_path / f"whole{suffix}")
    assert slab_header == whole_header, "the header is SimpleITK's own, its compressed size aside"
    assert slab_data == whole_data == labels.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"slabs{suffix}", f"whole{suffix}"]


@pytest.mark.parametrize("name", ("seg.mhd", "seg.nhdr", "seg.dcm", "seg.seg.nrrd", "seg.nii.zip", "seg.npz"))
def test_other_outputs_are_left_to_the_whole_volume_writer(tmp_path: Path, name: str) -> None:
    assert not writes_slab_wise(tmp_path / name)
    with pytest.raises(ValueError, match="write it whole"):
        SlabLabelFile(tmp_path / name, GEOMETRY, np.uint8, SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_what_writes_slab_wise() -> None:
    assert all(writes_slab_wise(Path(f"case{suffix.upper()}"), GEOMETRY) for suffix in FORMATS)
    flat = Geometry((48, 64), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    assert not writes_slab_wise(Path("case.nii.gz"), flat), "a 2D image is small: written whole"
    huge = Geometry((40000, 2, 2), (1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert not writes_slab_wise(Path("case.nii.gz"), huge) and writes_slab_wise(Path("case.nrrd"), huge), \
        "NIfTI-1 holds sizes up to 32767"


@pytest.mark.parametrize("mistake", ("too many rows", "wrong width", "wrong type", "commit early", "2D slab"))
def test_a_wrong_slab_is_refused_and_nothing_is_left(tmp_path: Path, mistake: str) -> None:
    labels = organ_labels()
    out = SlabLabelFile(tmp_path / "seg.nii.gz", GEOMETRY, np.uint8, SHAPE)
    out.write(labels[:30])
    with pytest.raises(ValueError):
        if mistake == "too many rows":
            out.write(labels[:11])
        elif mistake == "wrong width":
            out.write(labels[30:, :, :40])
        elif mistake == "wrong type":
            out.write(labels[30:].astype(np.int64))
        elif mistake == "2D slab":
            out.write(labels[30])
        else:
            out.commit()
    assert_not_written(tmp_path, "seg.nii.gz")
    with pytest.raises(ValueError, match="abandoned"):
        out.write(labels[30:])


def test_a_wrong_shape_or_type_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        SlabLabelFile(tmp_path / "seg.nrrd", GEOMETRY, np.uint8, (40, 64, 47))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        SlabLabelFile(tmp_path / "seg.nrrd", GEOMETRY, np.int32, SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_opened_on_one_thread_written_on_another(tmp_path: Path) -> None:
    labels = organ_labels()
    out = SlabLabelFile(tmp_path / "seg.nii.gz", GEOMETRY, np.uint8, SHAPE)

    def export() -> None:
        with out:
            for start, stop in itertools.pairwise(CUTS):
                out.write(labels[start:stop])

    worker = threading.Thread(target=export)
    worker.start()
    worker.join(60)
    assert out.rows_written == SHAPE[0]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))), labels)


def test_a_uint8_slab_goes_into_a_uint16_file(tmp_path: Path) -> None:
    labels = organ_labels()
    with SlabLabelFile(tmp_path / "seg.mha", GEOMETRY, np.uint16, SHAPE) as out:
        out.write(labels[:20])
        out.write(labels[20:].astype(np.uint16))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.mha"))), labels)


def test_an_empty_slab_adds_nothing(tmp_path: Path) -> None:
    labels = organ_labels()
    with SlabLabelFile(tmp_path / "seg.nii.gz", GEOMETRY, np.uint8, SHAPE) as out:
        out.write(labels[:0])  # e.g. no rows above nnU-Net's crop
        out.write(labels)
        out.write(labels[SHAPE[0]:])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))), labels)


@pytest.mark.parametrize("suffix", FORMATS)
def test_abort_and_an_exception_in_the_block_leave_nothing(tmp_path: Path, suffix: str) -> None:
    labels = organ_labels()
    out = SlabLabelFile(tmp_path / f"aborted{suffix}", GEOMETRY, np.uint8, SHAPE)
    out.write(labels[:13])
    out.abort()
    out.abort()  # twice is harmless
    with pytest.raises(KeyboardInterrupt), SlabLabelFile(tmp_path / f"interrupted{suffix}", GEOMETRY, np.uint8,
                                                         SHAPE) as out:
        out.write(labels[:13])
        raise KeyboardInterrupt
    assert_not_written(tmp_path, f"aborted{suffix}", f"interrupted{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_only_when_the_new_one_is_whole(tmp_path: Path) -> None:
    labels = organ_labels()
    write_in_slabs(tmp_path / "seg.nii.gz", labels)
    before = (tmp_path / "seg.nii.gz").read_bytes()
    with pytest.raises(RuntimeError), SlabLabelFile(tmp_path / "seg.nii.gz", GEOMETRY, np.uint8, SHAPE) as out:
        out.write(np.zeros_like(labels[:5]))
        raise RuntimeError("the prediction failed")
    assert (tmp_path / "seg.nii.gz").read_bytes() == before
    write_in_slabs(tmp_path / "seg.nii.gz", np.zeros_like(labels))
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))).any()


class SmallDisk:
    """A file on a disk with room for ``room`` bytes: a write beyond them raises ENOSPC (the operating system's
    answer); with ``short`` it keeps half of each write and says nothing (ITK's NWAD case)."""

    def __init__(self, handle, room: int, short: bool = False) -> None:
        self.handle, self.room, self.short = handle, room, short

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.short:
            return self.handle.write(data[: len(data) // 2])
        if self.handle.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_full_disk_is_one_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     suffix: str) -> None:
    """ENOSPC from a write in the middle of the data: DiskSpaceError (exit 3) naming the file, nothing left."""
    noise = np.random.default_rng(0).integers(0, 250, SHAPE).astype(np.uint8)  # compresses little: 120 kB
    real_open = open
    monkeypatch.setattr(slab_file, "open", lambda *a, **k: SmallDisk(real_open(*a, **k), 40_000), raising=False)
    with pytest.raises(DiskSpaceError, match="the disk is full") as raised:
        write_in_slabs(tmp_path / f"seg{suffix}", noise)
    assert raised.value.exit_code == 3 and f"seg{suffix}" in str(raised.value) and "\n" not in str(raised.value)
    assert_not_written(tmp_path, f"seg{suffix}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_full_disk_before_the_first_slab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """The header cannot be made (SimpleITK's reference file comes out short, the probe gets ENOSPC): the error comes
    from the constructor and nothing is left."""
    inject_full_disk(monkeypatch, tmp_path)
    with pytest.raises(DiskSpaceError, match="the disk is full"):
        SlabLabelFile(tmp_path / f"seg{suffix}", GEOMETRY, np.uint8, SHAPE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_silently_short_file_is_found_before_it_is_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               suffix: str) -> None:
    real_open = open
    monkeypatch.setattr(slab_file, "open", lambda *a, **k: SmallDisk(real_open(*a, **k), 0, short=True),
                        raising=False)
    with pytest.raises(WriteError, match="came out incomplete") as raised:
        write_in_slabs(tmp_path / f"seg{suffix}", organ_labels())
    assert raised.value.exit_code == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs (a real full disk) needs root; CI runs the suite as root")
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_real_full_disk(tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "disk"
    noise = np.random.default_rng(1).integers(0, 250, (60, 120, 150)).astype(np.uint8)  # 1.1 MB, compresses little
    geometry = Geometry(noise.shape[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with small_tmpfs(folder):
        with pytest.raises(DiskSpaceError, match="the disk is full") as raised, \
                SlabLabelFile(folder / f"seg{suffix}", geometry, np.uint8, noise.shape) as out:
            for start in range(0, 60, 10):
                out.write(noise[start:start + 10])
        assert raised.value.exit_code == 3
        assert_not_written(folder, f"seg{suffix}")
        assert list(folder.iterdir()) == []


_BOUNDED_MEMORY = r"""
import json, sys, zlib
from pathlib import Path
import numpy as np
from tilewise.engine.data.slab_file import SlabLabelFile
from tilewise.engine.data.volume import Geometry

z, y, x, rows = 200, 512, 512, 10
yy, xx = np.ogrid[:y, :x]
outside = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 >= 1
pattern = ((yy // 24 + xx // 24) % 100 + 1).astype(np.uint8)

def slab(start):  # bands of 100 labels in a body outline, shifting along z; built in place, one slab at a time
    labels = np.empty((rows, y, x), np.uint8)
    for i in range(rows):
        np.add(pattern, (start + i) // 8 % 50, out=labels[i])
        labels[i][outside] = 0
    return labels

path = Path(sys.argv[1])
with SlabLabelFile(path.with_name("warm-up" + sys.argv[2]), Geometry((4, 4, 2), (1.0,) * 3, (0.0,) * 3,
                   (1, 0, 0, 0, 1, 0, 0, 0, 1)), np.uint8, (2, 4, 4)) as warm_up:
    warm_up.write(np.ones((2, 4, 4), np.uint8))  # loads SimpleITK's file readers and writers: not the writer's data

def memory(field):  # bytes (/proc/self/status says kB): VmRSS now, VmHWM the peak since the last reset
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak is now the current memory (what imports touched and gave back no longer counts)
crc, before = 0, memory("VmRSS")
geometry = Geometry((x, y, z), (0.8, 0.8, 1.5), (-200.0, -200.0, 100.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
with SlabLabelFile(path, geometry, np.uint8, (z, y, x)) as out:
    for start in range(0, z, rows):
        labels = slab(start)
        out.write(labels)
        crc = zlib.crc32(labels, crc)
print(json.dumps({"growth": memory("VmHWM") - before, "slab": rows * y * x, "crc": crc}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak memory from /proc/self/status")
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_large_volume_is_written_in_the_memory_of_a_few_slabs(tmp_path: Path, suffix: str) -> None:
    """512 x 512 x 200 uint8 (52 MB) in 10-row slabs (2.6 MB): the process's peak memory grows by less than three
    slabs (the test's own two included: the one written and the next one made) while the file is opened, written,
    checked and published. The peak is the kernel's (VmHWM, reset first): getrusage's ru_maxrss keeps the peak of
    the process that forked this one (pytest's), which hides any growth below it."""
    path = tmp_path / f"big{suffix}"
    done = subprocess.run([sys.executable, "-c", _BOUNDED_MEMORY, str(path), suffix], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["growth"] < 3 * measured["slab"], measured
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (512, 512, 200)
    assert zlib.crc32(sitk.GetArrayViewFromImage(image)) == measured["crc"], "every slab is in the file, in order"

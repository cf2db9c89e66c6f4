"""Verified writes, unit by unit: the checks find every truncated file, the operating system's errors become one
plain line with the right exit code, native noise is held back, and files are fsynced before their rename."""
from __future__ import annotations

import errno
import json
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fault_disks import IS_ROOT, NEEDS_ROOT, assert_not_written, fill, inject_full_disk, small_tmpfs
from tilewise.engine.data import safe_output
from tilewise.engine.data.native_stderr import holding_native_stderr
from tilewise.engine.data.outputs import write_json
from tilewise.engine.data.safe_output import IncompleteFile, atomic_output, write_bytes_checked
from tilewise.engine.data.volume import Geometry
from tilewise.engine.data.write_checks import check_image_file, save_dicom_checked, save_npz_checked
from tilewise.engine.data.writers import labels_to_image, write_labels, write_probabilities
from tilewise.engine.errors import (
    DiskSpaceError,
    OutputPathError,
    WriteAccessError,
    WriteError,
    output_error,
)

FORMATS = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
SHAPE = (12, 40, 44)  # (z, y, x)
GEOMETRY = Geometry(SHAPE[::-1], (0.8, 0.9, 2.5), (1.0, -2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def labels(seed: int = 0) -> np.ndarray:
    """Labels that compress little (random), so that every cut lands in the data."""
    return np.random.default_rng(seed).integers(0, 200, SHAPE).astype(np.uint8)


def data_file(path: Path) -> Path:
    """The file holding the voxels: a .mhd header's .zraw/.raw, else the file itself."""
    if path.name.endswith(".mhd"):
        return next(p for p in path.parent.iterdir() if p.suffix in (".zraw", ".raw"))
    return path


# ---- the checks find what is missing ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
def test_whole_files_pass_and_every_cut_is_found(tmp_path: Path, suffix: str) -> None:
    image = labels_to_image(labels(), GEOMETRY)
    path = tmp_path / f"seg{suffix}"
    sitk.WriteImage(image, str(path), True)
    check_image_file(path, image)  # the whole file passes
    target = data_file(path)
    whole = target.read_bytes()
    for keep in (len(whole) - 1, len(whole) - 9, len(whole) // 2, 400, 0):
        target.write_bytes(whole[:keep])
        with pytest.raises(IncompleteFile):
            check_image_file(path, image)


def test_a_header_for_another_image_is_found(tmp_path: Path) -> None:
    path = tmp_path / "seg.nii.gz"
    sitk.WriteImage(labels_to_image(labels(), GEOMETRY), str(path), True)
    other = Geometry((44, 40, 11), GEOMETRY.spacing, GEOMETRY.origin, GEOMETRY.direction)
    with pytest.raises(IncompleteFile, match="size"):
        check_image_file(path, labels_to_image(labels()[:11], other))


def test_corrupt_compressed_data_is_found(tmp_path: Path) -> None:
    path = tmp_path / "seg.nii.gz"
    image = labels_to_image(labels(), GEOMETRY)
    sitk.WriteImage(image, str(path), True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the deflate stream or its CRC no longer fits
    path.write_bytes(bytes(data))
    with pytest.raises(IncompleteFile):
        check_image_file(path, image)


def test_npz_and_dicom_checks_compare_the_bytes_meant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset

    save_npz_checked(tmp_path / "p.npz", probabilities=np.ones((2, 3, 4), np.float16))
    assert np.load(tmp_path / "p.npz")["probabilities"].shape == (2, 3, 4)

    dataset = pydicom.Dataset()
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.PatientName = "Test"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    save_dicom_checked(dataset, tmp_path / "ok.dcm")
    assert pydicom.dcmread(tmp_path / "ok.dcm", force=True).SOPInstanceUID == dataset.SOPInstanceUID

    real_save = type(dataset).save_as

    def short_save(self, handle, *args, **kwargs):  # the bytes reach the file object, half of them the disk
        real_save(self, handle, *args, **kwargs)
        handle.flush()
        os.truncate(handle.name, handle.tell() // 2)

    monkeypatch.setattr(type(dataset), "save_as", short_save)
    with pytest.raises(IncompleteFile, match="bytes on the disk"):
        save_dicom_checked(dataset, tmp_path / "short.dcm")


# ---- what a failed write says and leaves -----------------------------------------------------------------------
@pytest.mark.parametrize(("code", "kind", "exit_code", "words"), [
    (errno.ENOSPC, DiskSpaceError, 3, "the disk is full"),
    (errno.EDQUOT, DiskSpaceError, 3, "disk quota is used up"),
    (errno.EROFS, WriteAccessError, 3, "the folder is read-only"),
    (errno.EACCES, WriteAccessError, 3, "you do not have permission"),
    (errno.EPERM, WriteAccessError, 3, "you do not have permission"),
    (errno.EISDIR, OutputPathError, 2, "existing folder"),
    (errno.ENOTDIR, OutputPathError, 2, "is a file, not a folder"),
    (errno.ENAMETOOLONG, OutputPathError, 2, "too long"),
    (errno.EIO, WriteError, 3, os.strerror(errno.EIO)),
])
def test_operating_system_errors_map_to_one_plain_line(tmp_path: Path, code: int, kind: type, exit_code: int,
                                                       words: str) -> None:
    error = output_error(OSError(code, os.strerror(code)), tmp_path / "out" / "seg.nii")
    assert type(error) is kind and error.exit_code == exit_code
    assert words in str(error) and "\n" not in str(error)
    if code == errno.EROFS:
        assert str(error) == f"cannot write to {tmp_path / 'out'}: the folder is read-only"


def test_an_output_name_that_is_a_folder_or_under_a_file_is_a_path_error(tmp_path: Path) -> None:
    (tmp_path / "seg.nii.gz").mkdir()
    with pytest.raises(OutputPathError, match="existing folder") as raised:
        write_labels(labels(), GEOMETRY, tmp_path / "seg.nii.gz")
    assert raised.value.exit_code == 2
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(OutputPathError, match="notes.txt is a file, not a folder") as raised:
        write_json(tmp_path / "notes.txt" / "report.json", {})
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("suffix", (".nii", ".nii.gz", ".nrrd", ".mha"))
def test_a_short_itk_write_is_an_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capfd: pytest.CaptureFixture, suffix: str) -> None:
    """ITK on a full disk: part of the file written, a line on stderr, a normal return."""
    real_write = sitk.WriteImage

    def short_write(image, name, *args):
        real_write(image, name, *args)
        os.truncate(name, os.path.getsize(name) * 2 // 3)
        os.write(2, b"** ERROR: NWAD: wrote only 2 of 3 bytes to file\n")

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    with pytest.raises(WriteError, match="came out incomplete") as raised:
        write_labels(labels(), GEOMETRY, tmp_path / f"seg{suffix}")
    assert raised.value.exit_code == 3 and str(tmp_path / f"seg{suffix}") in str(raised.value)
    assert_not_written(tmp_path, f"seg{suffix}")
    assert "NWAD" not in capfd.readouterr().err, "ITK's line about the failed write is held back"


@pytest.mark.parametrize("suffix", (".nii", ".nii.gz", ".mha", ".nrrd", ".mhd"))
def test_disk_full_on_a_real_small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capfd: pytest.CaptureFixture, suffix: str) -> None:
    """A real 1 MB tmpfs as root (the suite in CI); ENOSPC injected at the writer's calls otherwise."""
    folder = tmp_path / "disk"
    big = np.random.default_rng(1).integers(0, 250, (60, 120, 150)).astype(np.uint8)  # 1.1 MB, compresses little
    geometry = Geometry(big.shape[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    if IS_ROOT:
        with small_tmpfs(folder):
            with pytest.raises(DiskSpaceError, match="the disk is full") as raised:
                write_labels(big, geometry, folder / f"seg{suffix}")
            assert_not_written(folder, f"seg{suffix}", "seg.zraw")
    else:
        folder.mkdir()
        inject_full_disk(monkeypatch, folder)
        with pytest.raises(DiskSpaceError, match="the disk is full") as raised:
            write_labels(big, geometry, folder / f"seg{suffix}")
        assert_not_written(folder, f"seg{suffix}", "seg.zraw")
    assert raised.value.exit_code == 3
    err = capfd.readouterr().err
    assert "NWAD" not in err and "MetaImage" not in err, err


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_json_probabilities_and_read_only_on_real_mounts(tmp_path: Path) -> None:
    folder = tmp_path / "disk"
    with small_tmpfs(folder):
        fill(folder, leave=4096)
        with pytest.raises(DiskSpaceError):
            write_json(folder / "summary.json", {"cases": ["x" * 100] * 100})
        with pytest.raises(DiskSpaceError):
            write_probabilities(np.random.default_rng(0).random((3, 30, 40, 50), np.float32), {"a": 1},
                                folder / "case")
        assert_not_written(folder, "summary.json", "case.npz", "case.pkl")
    with small_tmpfs(folder, read_only=True):
        with pytest.raises(WriteAccessError) as raised:
            write_labels(labels(), GEOMETRY, folder / "seg.nii.gz")
        assert str(raised.value) == f"cannot write to {folder}: the folder is read-only"
        assert raised.value.exit_code == 3


def test_injected_no_space_for_python_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC at the writer's open (runs as any user): JSON, .pkl and .npz writes."""
    inject_full_disk(monkeypatch, tmp_path)
    with pytest.raises(DiskSpaceError):
        write_json(tmp_path / "summary.json", {"a": 1})
    with pytest.raises(DiskSpaceError):
        write_probabilities(np.zeros((2, 3, 4, 5), np.float16), {}, tmp_path / "case")
    assert_not_written(tmp_path, "summary.json", "case.npz", "case.pkl")


def test_a_short_python_write_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    class ShortFile:  # a file system that keeps only half of what it is given
        def __init__(self, handle):
            self.handle = handle

        def write(self, data: bytes) -> int:
            return self.handle.write(data[: len(data) // 2])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(safe_output, "open", lambda f, m="r", *a, **k: ShortFile(real_open(f, m, *a, **k))
                        if "w" in m else real_open(f, m, *a, **k), raising=False)
    with pytest.raises(WriteError, match="incomplete"), atomic_output(tmp_path / "report.json") as staged:
        write_bytes_checked(staged, json.dumps({"a": list(range(100))}).encode())
    assert_not_written(tmp_path, "report.json")


# ---- fsync and native noise ------------------------------------------------------------------------------------
def test_the_file_and_its_folder_are_fsynced_before_and_after_the_rename(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target) -> None:
        events.append("rename")
        real_replace(source, target)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the descriptors synced")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_labels(labels(), GEOMETRY, tmp_path / "seg.nii.gz")
    assert events.index("fsync seg.nii.gz") < events.index("rename"), events
    assert events[-1] == f"fsync {tmp_path.name}", "the folder is synced after the rename"


def test_native_lines_are_shown_after_a_good_write_and_dropped_after_a_failed_one(
        capfd: pytest.CaptureFixture) -> None:
    with holding_native_stderr():
        os.write(2, b"native note\n")
    assert capfd.readouterr().err == "native note\n"
    with pytest.raises(RuntimeError), holding_native_stderr():
        os.write(2, b"NWAD: wrote only 1 of 2 bytes\n")
        raise RuntimeError("short write")
    assert capfd.readouterr().err == ""


def test_everything_written_is_whole_and_the_same(tmp_path: Path) -> None:
    """Reading back what the checked writers wrote gives the labels, geometry and payloads meant."""
    expected = labels(3)
    for suffix in FORMATS:
        write_labels(expected, GEOMETRY, tmp_path / f"seg{suffix}")
        image = sitk.ReadImage(str(tmp_path / f"seg{suffix}"))
        assert np.array_equal(sitk.GetArrayFromImage(image), expected), suffix
        assert np.allclose(image.GetSpacing(), GEOMETRY.spacing)
    write_json(tmp_path / "r.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1, 2]}
    assert not [p for p in tmp_path.iterdir() if ".tilewise-tmp." in p.name]


def test_dicom_seg_and_rtstruct_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DICOM writers through write_output, as predict, batch and the viewer call it: a full disk (real tmpfs as
    root, ENOSPC injected otherwise) is DiskSpaceError, nothing under the final names; with space, both read back."""
    pytest.importorskip("highdicom")
    pytest.importorskip("rt_utils")
    import pydicom
    from dicom_factory import resampled_sample, write_ct_series
    from tilewise.engine.data.dicom.seg import AlgorithmInfo
    from tilewise.engine.data.outputs import write_output
    from tilewise.engine.data.readers import read_volume

    write_ct_series(resampled_sample((48, 48, 24), (4.0, 4.0, 6.0)), tmp_path / "ct")
    volume = read_volume([tmp_path / "ct"])
    labels = np.zeros(volume.array.shape[-3:], np.uint8)
    labels[4:20, 10:38, 10:38] = 1
    labels[8:16, 18:30, 18:30] = 2
    names = {0: "background", 1: "brain", 2: "white matter"}
    outputs = ("case_seg.dcm", "case_rtstruct.dcm")
    written = tmp_path / "written"
    for name in outputs:
        write_output(labels, volume.geometry, volume.dicom_files, names, AlgorithmInfo("m"), written / name)
        assert pydicom.dcmread(written / name, force=True).Modality in ("SEG", "RTSTRUCT")
    folder = tmp_path / "disk"
    with ExitStack() as stack:
        if IS_ROOT:
            stack.enter_context(small_tmpfs(folder))
            fill(folder, leave=4096)
        else:
            folder.mkdir()
            inject_full_disk(monkeypatch, folder)
        for name in outputs:
            with pytest.raises(DiskSpaceError, match=f"cannot write {name} to {folder}: the disk is full"):
                write_output(labels, volume.geometry, volume.dicom_files, names, AlgorithmInfo("m"), folder / name)
        assert_not_written(folder, *outputs)

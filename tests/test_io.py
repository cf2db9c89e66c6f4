"""Reading images into Volumes and writing label maps: geometry, formats, DICOM, channels, atomic writes."""
from __future__ import annotations

import re
from pathlib import Path

import model_factory
from dicom_factory import write_dicom_series
import numpy as np
import pytest
import SimpleITK as sitk
from tilewise.engine import InputError, read_volume, write_labels
from tilewise.engine.data import readers as engine_io
from tilewise.engine.data.cases import find_cases
from tilewise.engine.errors import WriteError

FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
SHAPE = (12, 16, 20)  # numpy (z, y, x)
SPACING = (0.7, 1.3, 2.5)  # SimpleITK (x, y, z)
ORIGIN = (12.5, -30.25, 7.0)


def rotation(ax: float, ay: float, az: float) -> tuple[float, ...]:
    """A proper rotation matrix (row-major, 9 floats) that is not axis-aligned."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple(float(v) for v in (rz @ ry @ rx).ravel())


OBLIQUE = rotation(0.3, -0.2, 0.5)


def assert_same_geometry(image: sitk.Image, reference: sitk.Image, atol: float = 1e-6) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=atol)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=atol)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=atol)


def some_labels(shape: tuple[int, ...], seed: int = 0, high: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.uint8 if high <= 256 else np.uint16)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and engine_io.image_suffix(p) is not None)


# ---- every file format keeps its geometry -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_read_and_write_keep_geometry(tmp_path: Path, suffix: str) -> None:
    source = model_factory.make_case(tmp_path / f"in{suffix}", "3d", shape=SHAPE, spacing=SPACING,
                                     direction=OBLIQUE, origin=ORIGIN)
    source_image = sitk.ReadImage(str(source))

    volume = read_volume(source)

    assert volume.array.shape == (1, *SHAPE)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[0], sitk.GetArrayFromImage(source_image))
    geometry = volume.geometry
    assert geometry.ndim == 3
    assert geometry.size == SHAPE[::-1]
    # NIfTI stores float32 geometry, hence the tolerance against the values we asked for
    np.testing.assert_allclose(geometry.spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(geometry.origin, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(geometry.direction, OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(volume.nnunet_spacing, SPACING[::-1], atol=1e-5)

    labels = some_labels(SHAPE)
    target = tmp_path / "out" / f"seg{suffix}"
    write_labels(labels, geometry, target)

    written = sitk.ReadImage(str(target))
    assert_same_geometry(written, source_image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)


def test_many_labels_are_written_without_overflow(tmp_path: Path) -> None:
    source = model_factory.make_case(tmp_path / "in.nii.gz", "3d", shape=SHAPE)
    volume = read_volume(source)
    labels = some_labels(SHAPE, high=600)
    assert labels.max() > 255

    write_labels(labels, volume.geometry, tmp_path / "seg.nii.gz")

    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))), labels)


def test_write_labels_rejects_a_shape_that_does_not_fit_the_geometry(tmp_path: Path) -> None:
    volume = read_volume(model_factory.make_case(tmp_path / "in.nii.gz", "3d", shape=SHAPE))
    with pytest.raises(ValueError):
        write_labels(some_labels((SHAPE[0], SHAPE[1], SHAPE[2] + 1)), volume.geometry, tmp_path / "seg.nii.gz")
    assert not (tmp_path / "seg.nii.gz").exists()


# ---- unreadable inputs ----------------------------------------------------------------------------------------


def test_missing_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing_0000.nii.gz"
    with pytest.raises(InputError) as caught:
        read_volume(missing)
    assert caught.value.source == str(missing)
    assert str(missing) in str(caught.value)


def test_unsupported_file_type_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert caught.value.source == str(path)


def test_folder_without_images_or_dicom_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError) as caught:
        read_volume(tmp_path)
    assert caught.value.source == str(tmp_path)


@pytest.mark.parametrize("suffix", (".nii.gz", ".nii", ".nrrd", ".mha"))
def test_truncated_file_is_an_input_error(tmp_path: Path, suffix: str) -> None:
    """A file cut off halfway (an interrupted copy or download) must not be read as a half-empty volume."""
    path = model_factory.make_case(tmp_path / f"cut_0000{suffix}", "3d", shape=SHAPE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(InputError) as caught:
        read_volume(path)

    assert caught.value.source == str(path)
    # the file exists: the explanation must not claim otherwise
    assert "no such file" not in caught.value.problem.lower()


# ---- DICOM series folders ---------------------------------------------------------------------------------------


def dicom_volume(shape: tuple[int, int, int], spacing, origin, direction, seed: int) -> tuple[sitk.Image, np.ndarray]:
    array = np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image, array


QUARTER_TURN = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def test_dicom_series_folder(tmp_path: Path) -> None:
    spacing, origin = (0.8, 0.6, 3.0), (10.0, -20.0, 30.0)
    image, array = dicom_volume((7, 20, 24), spacing, origin, QUARTER_TURN, seed=1)
    folder = tmp_path / "series"
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.77.1", "slice")

    volume = read_volume(folder)

    assert volume.array.shape == (1, 7, 20, 24)
    np.testing.assert_array_equal(volume.array[0], array)
    assert volume.geometry.size == (24, 20, 7)
    np.testing.assert_allclose(volume.geometry.spacing, spacing, atol=1e-4)  # slice spacing from positions
    np.testing.assert_allclose(volume.geometry.origin, origin, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, QUARTER_TURN, atol=1e-6)
    assert engine_io.is_dicom_folder(folder)


@pytest.mark.parametrize("larger_first", (True, False), ids=("larger-uid-first", "larger-uid-last"))
def test_dicom_folder_with_two_series_reads_the_larger(tmp_path: Path, larger_first: bool) -> None:
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    large, large_array = dicom_volume((9, 20, 22), (0.7, 0.7, 2.0), (1.0, 2.0, 3.0), identity, seed=2)
    small, _ = dicom_volume((4, 12, 14), (1.5, 1.5, 5.0), (-5.0, -6.0, -7.0), identity, seed=3)
    uids = ["1.2.826.0.1.3680043.2.1125.88.1", "1.2.826.0.1.3680043.2.1125.88.2"]
    large_uid, small_uid = uids if larger_first else uids[::-1]
    folder = tmp_path / "study"
    write_dicom_series(large, folder, large_uid, "large")
    write_dicom_series(small, folder, small_uid, "small")
    assert len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))) == 2

    volume = read_volume(folder)

    assert volume.array.shape == (1, 9, 20, 22)
    np.testing.assert_array_equal(volume.array[0], large_array)
    np.testing.assert_allclose(volume.geometry.spacing, (0.7, 0.7, 2.0), atol=1e-4)
    np.testing.assert_allclose(volume.geometry.origin, (1.0, 2.0, 3.0), atol=1e-4)


# ---- several channels -------------------------------------------------------------------------------------------


def test_channel_files_are_stacked_in_order(tmp_path: Path) -> None:
    files = model_factory.case_files(tmp_path, "case", "two_channel", shape=SHAPE)

    volume = read_volume(files)

    assert volume.array.shape == (2, *SHAPE)
    assert volume.num_channels == 2
    for channel, file in enumerate(files):
        np.testing.assert_array_equal(volume.array[channel], sitk.GetArrayFromImage(sitk.ReadImage(str(file))))
    assert not np.array_equal(volume.array[0], volume.array[1])
    assert volume.sources == tuple(files)


def test_vector_image_components_become_channels(tmp_path: Path) -> None:
    array = np.random.default_rng(5).normal(size=(*SHAPE, 2)).astype(np.float32)
    image = sitk.GetImageFromArray(array, isVector=True)
    image.SetSpacing(SPACING)
    path = tmp_path / "vector.nrrd"
    sitk.WriteImage(image, str(path))

    volume = read_volume(path)

    assert volume.array.shape == (2, *SHAPE)
    np.testing.assert_array_equal(volume.array, np.moveaxis(array, -1, 0))
    assert volume.geometry.size == SHAPE[::-1]


def test_channels_of_different_size_name_the_offending_file(tmp_path: Path) -> None:
    first = model_factory.make_case(tmp_path / "case_0000.nii.gz", "two_channel", shape=SHAPE, channel=0)
    second = model_factory.make_case(tmp_path / "case_0001.nii.gz", "two_channel", shape=(12, 16, 22), channel=1)

    with pytest.raises(InputError) as caught:
        read_volume([first, second])

    assert caught.value.source == str(second)
    assert str(second) in str(caught.value)
    assert str(first) not in str(caught.value)


def test_channels_of_different_spacing_name_the_offending_file(tmp_path: Path) -> None:
    first = model_factory.make_case(tmp_path / "case_0000.nii.gz", "two_channel", shape=SHAPE, channel=0)
    second = model_factory.make_case(tmp_path / "case_0001.nii.gz", "two_channel", shape=SHAPE, channel=1,
                                     spacing=(1.0, 1.0, 2.0))

    with pytest.raises(InputError) as caught:
        read_volume([first, second])

    assert caught.value.source == str(second)


# ---- nnU-Net input folders --------------------------------------------------------------------------------------


def test_find_cases_groups_channels_by_case(tmp_path: Path) -> None:
    for case in ("beta", "alpha"):
        model_factory.case_files(tmp_path, case, "two_channel", shape=(6, 8, 8))
    (tmp_path / "notes.txt").write_text("not an image")

    cases = find_cases(tmp_path, num_channels=2)

    assert list(cases) == ["alpha", "beta"]
    for case, files in cases.items():
        assert files == [tmp_path / f"{case}_0000.nii.gz", tmp_path / f"{case}_0001.nii.gz"]


def test_find_cases_takes_plain_names_as_single_channel_cases(tmp_path: Path) -> None:
    model_factory.make_case(tmp_path / "scan.nrrd", "3d", shape=(6, 8, 8))
    model_factory.make_case(tmp_path / "other_0000.mha", "3d", shape=(6, 8, 8))

    cases = find_cases(tmp_path, num_channels=1)

    assert cases == {"other": [tmp_path / "other_0000.mha"], "scan": [tmp_path / "scan.nrrd"]}


def test_find_cases_names_the_case_with_a_missing_channel(tmp_path: Path) -> None:
    model_factory.case_files(tmp_path, "complete", "two_channel", shape=(6, 8, 8))
    model_factory.make_case(tmp_path / "partial_0000.nii.gz", "two_channel", shape=(6, 8, 8), channel=0)

    with pytest.raises(InputError) as caught:
        find_cases(tmp_path, num_channels=2)

    message = str(caught.value)
    assert "partial" in message
    assert "partial_0001" in message
    assert "complete" not in message


def test_find_cases_in_a_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError) as caught:
        find_cases(tmp_path, num_channels=1)
    assert caught.value.source == str(tmp_path)


# ---- atomic writes ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path):
    return read_volume(model_factory.make_case(tmp_path / "source" / "img.nii.gz", "3d", shape=(6, 8, 10),
                                               spacing=SPACING, direction=OBLIQUE, origin=ORIGIN))


def test_write_labels_creates_missing_parent_folders(tmp_path: Path, small_volume) -> None:
    target = tmp_path / "new" / "nested" / "seg.nii.gz"
    labels = some_labels(small_volume.shape)

    write_labels(labels, small_volume.geometry, target)

    assert target.is_file()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), labels)
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]


def _partial_writer(calls: list[str], error: BaseException):
    def write_image(image, file_name, *args, **kwargs):
        calls.append(str(file_name))
        path = Path(file_name)
        path.write_bytes(b"half an image")
        if path.name.endswith(".mhd"):
            path.with_suffix(".zraw").write_bytes(b"half the data")
        raise error

    return write_image


@pytest.mark.parametrize("suffix", (".nii.gz", ".mhd"))
@pytest.mark.parametrize("error", (RuntimeError("disk full"), KeyboardInterrupt()), ids=("error", "interrupt"))
def test_failed_write_leaves_nothing_behind(tmp_path: Path, small_volume, monkeypatch, suffix: str,
                                            error: BaseException) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("unrelated")
    calls: list[str] = []
    monkeypatch.setattr(engine_io.sitk, "WriteImage", _partial_writer(calls, error))

    expected = WriteError if isinstance(error, RuntimeError) else type(error)  # an ITK failure is one plain line
    with pytest.raises(expected):
        write_labels(some_labels(small_volume.shape), small_volume.geometry, out / f"seg{suffix}")

    assert calls, "the write must have gone through SimpleITK.WriteImage"
    assert Path(calls[0]) != out / f"seg{suffix}", "the data must be staged, not written at the target"
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]


def test_failed_write_keeps_an_existing_output(tmp_path: Path, small_volume, monkeypatch) -> None:
    target = tmp_path / "seg.nii.gz"
    first = some_labels(small_volume.shape, seed=1)
    write_labels(first, small_volume.geometry, target)
    before = target.read_bytes()
    monkeypatch.setattr(engine_io.sitk, "WriteImage", _partial_writer([], RuntimeError("disk full")))

    with pytest.raises(WriteError):
        write_labels(some_labels(small_volume.shape, seed=2), small_volume.geometry, target)

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["seg.nii.gz", "source"])


def test_metaimage_header_and_data_arrive_together(tmp_path: Path, small_volume) -> None:
    target = tmp_path / "out" / "seg.mhd"
    labels = some_labels(small_volume.shape)

    write_labels(labels, small_volume.geometry, target)

    header = target.read_text()
    match = re.search(r"^ElementDataFile\s*=\s*(\S+)\s*$", header, flags=re.MULTILINE)
    assert match, header
    data_file = target.parent / match[1]
    assert data_file.is_file()
    assert data_file.name.startswith("seg.")
    assert sorted(p.name for p in target.parent.iterdir()) == sorted({"seg.mhd", data_file.name})
    written = sitk.ReadImage(str(target))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)
    assert_same_geometry(written, sitk.ReadImage(str(small_volume.sources[0])), atol=1e-5)


# ---- 2D images --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", (".nrrd", ".mha", ".nii.gz"))
def test_2d_image_reads_as_one_slice_with_nnunet_spacing(tmp_path: Path, suffix: str) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    array = np.random.default_rng(4).integers(-500, 500, (18, 26)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3))
    image.SetOrigin((4.0, -2.5))
    angle = 0.4
    image.SetDirection((np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)))
    path = tmp_path / f"slice{suffix}"
    sitk.WriteImage(image, str(path))

    volume = read_volume(path)

    assert volume.array.shape == (1, 1, 18, 26)
    np.testing.assert_array_equal(volume.array[0, 0], array)
    assert volume.geometry.ndim == 2
    assert volume.geometry.size == (26, 18)
    np.testing.assert_allclose(volume.geometry.spacing, (0.7, 1.3), atol=1e-6)
    nnunet_array, properties = SimpleITKIO().read_images([str(path)])
    assert nnunet_array.shape == volume.array.shape
    np.testing.assert_allclose(volume.nnunet_spacing, [float(s) for s in properties["spacing"]], rtol=1e-6)

    labels = some_labels((1, 18, 26))
    write_labels(labels, volume.geometry, tmp_path / "out" / f"seg{suffix}")
    written = sitk.ReadImage(str(tmp_path / "out" / f"seg{suffix}"))
    assert written.GetDimension() == 2
    assert_same_geometry(written, sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels[0])

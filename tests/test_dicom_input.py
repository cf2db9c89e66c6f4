"""DICOM inputs: several series in a folder (the largest, or ``--series-uid``), nested PACS-style folders, zips
(and unsafe ones refused), multi-frame enhanced objects made by highdicom's real legacy converter, and one clear
line for what is no image volume (SR, SEG, localizer, broken stacks), also through the CLI (exit 2)."""
from __future__ import annotations

import gc
import json
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from tilewise.engine import InputError, read_volume
from tilewise.engine.data.cases import collect_cases

from cli_helpers import ERROR_PREFIX, predict_args

SHAPE = (16, 48, 40)  # numpy (z, y, x)
TILTED_ROW, TILTED_COLUMN = (1.0, 0.0, 0.0), (0.0, float(np.cos(0.3)), float(np.sin(0.3)))


def ct_datasets(array: np.ndarray, *, origin=(-20.0, 10.0, 5.0), row=TILTED_ROW, column=TILTED_COLUMN,
                pixel_spacing=(0.7, 0.8), gap=2.5, intercepts=(-1024.0,), image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                positions=None, series_uid: str | None = None) -> list[Dataset]:
    """A CT Image Storage series of ``array`` (stored uint16), slice k at ``origin + k * gap * normal`` unless
    ``positions`` says otherwise; slice k's rescale intercept is ``intercepts[k % len(intercepts)]``."""
    normal = np.cross(row, column)
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    datasets = []
    for k, plane in enumerate(array):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20260101", "120000", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID, ds.PositionReferenceIndicator = "", "", "1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "CT", 3, k + 1, "test"
        ds.ImageType = list(image_type)
        ds.ImageOrientationPatient = [*row, *column]
        ds.ImagePositionPatient = list(np.asarray(origin) + k * gap * normal) if positions is None else list(positions[k])
        ds.PixelSpacing, ds.SliceThickness, ds.KVP, ds.AcquisitionNumber = list(pixel_spacing), gap, 120, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", *plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercepts[k % len(intercepts)], 1, "HU"
        ds.PixelData = plane.astype(np.uint16).tobytes()
        datasets.append(ds)
    return datasets


def save(datasets: list[Dataset], folder: Path, prefix: str = "IM") -> list[Path]:
    """Write ``datasets`` to ``folder`` in a shuffled order of names (the reader must sort by position)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = np.random.default_rng(0).permutation(len(datasets))
    paths = []
    for ds, name in zip(datasets, names):
        paths.append(folder / f"{prefix}{name:04d}")  # no extension, as PACS exports name them
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def stored(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)


def gdcm_read(folder: Path) -> sitk.Image:
    """SimpleITK's own read of the only series of ``folder`` (GDCM's sort), the reference for geometry."""
    reader = sitk.ImageSeriesReader()
    [uid] = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def assert_volume_is(volume, image: sitk.Image) -> None:
    np.testing.assert_array_equal(volume.array[0], sitk.GetArrayFromImage(image).astype(np.float32))
    assert volume.geometry.size == image.GetSize()
    np.testing.assert_allclose(volume.geometry.spacing, image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(volume.geometry.origin, image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(volume.geometry.direction, image.GetDirection(), atol=1e-9)


@pytest.fixture
def study(tmp_path: Path) -> dict:
    """A PACS-style tree: DICOMDIR-like nesting with a 16-slice and a 6-slice series, a text file, a hidden file."""
    root = tmp_path / "study"
    large = ct_datasets(stored(1))
    small = ct_datasets(stored(2, (6, 32, 30)), origin=(0.0, 0.0, 0.0), row=(1.0, 0.0, 0.0), column=(0.0, 1.0, 0.0))
    save(large, root / "DICOM" / "ST000" / "SE000")
    save(small, root / "DICOM" / "ST000" / "SE001")
    (root / "README.txt").write_text("exported by a PACS", encoding="utf-8")
    (root / "DICOM" / ".DS_Store").write_bytes(b"\0" * 200)
    return {"root": root, "large": large[0].SeriesInstanceUID, "small": small[0].SeriesInstanceUID}


# ---- several series, nested folders, --series-uid ---------------------------------------------------------------
def test_the_largest_series_of_a_nested_folder_is_read(study: dict) -> None:
    volume = read_volume(study["root"])

    assert_volume_is(volume, gdcm_read(study["root"] / "DICOM" / "ST000" / "SE000"))
    assert volume.sources == (study["root"],)
    assert [pydicom.dcmread(f).SeriesInstanceUID for f in volume.dicom_files] == [study["large"]] * SHAPE[0]
    along = [np.dot(pydicom.dcmread(f).ImagePositionPatient, np.cross(TILTED_ROW, TILTED_COLUMN))
             for f in volume.dicom_files]
    assert np.all(np.diff(along) > 0), "dicom_files follow the array's z order"


def test_series_uid_picks_the_other_series(study: dict) -> None:
    volume = read_volume(study["root"], series_uid=study["small"])

    assert_volume_is(volume, gdcm_read(study["root"] / "DICOM" / "ST000" / "SE001"))
    assert volume.shape == (6, 32, 30)


def test_an_unknown_series_uid_is_one_line_listing_the_series(study: dict) -> None:
    with pytest.raises(InputError) as caught:
        read_volume(study["root"], series_uid="1.2.3.4")
    message = str(caught.value)
    assert "\n" not in message and "1.2.3.4" in message
    assert study["large"] in message and study["small"] in message and "16 slices" in message


def test_a_series_uid_for_a_file_that_is_no_dicom_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match="no DICOM input"):
        read_volume(path, series_uid="1.2.3")


def test_one_file_of_a_series_stands_for_its_series(study: dict) -> None:
    one_file = next((study["root"] / "DICOM" / "ST000" / "SE001").iterdir())
    assert read_volume(one_file).shape == (6, 32, 30)


# ---- zip --------------------------------------------------------------------------------------------------------
def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                opened.write(path, path.relative_to(folder.parent))
    return archive


def test_a_zip_reads_as_its_folder_and_its_files_go_with_the_volume(study: dict, tmp_path: Path) -> None:
    archive = zip_folder(study["root"], tmp_path / "case.zip")

    volume = read_volume(archive)

    expected = read_volume(study["root"])
    np.testing.assert_array_equal(volume.array, expected.array)
    assert volume.geometry.same_as(expected.geometry)
    assert volume.sources == (archive,)
    unpacked = volume.dicom_files[0]
    assert unpacked.is_file() and not unpacked.is_relative_to(tmp_path), "read from a temporary folder"
    del volume
    gc.collect()
    assert not unpacked.exists(), "the unpacked files are removed with the Volume"


def test_a_zip_case_is_named_after_the_zip(study: dict, tmp_path: Path) -> None:
    archive = zip_folder(study["root"], tmp_path / "case.zip")
    [case] = collect_cases(archive, tmp_path / "out", 1)
    assert (case.name, case.inputs, case.output) == ("case", (archive,), tmp_path / "out" / "case.nii.gz")


@pytest.mark.parametrize("entry", ("../evil.dcm", "/tmp/evil.dcm", "series/../../evil.dcm", "..\\evil.dcm",
                                   "C:/evil.dcm"))
def test_a_zip_entry_outside_its_folder_is_refused(tmp_path: Path, entry: str) -> None:
    archive = tmp_path / "inner" / "bad.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("series/IM0001", b"not read")
        opened.writestr(entry, b"payload")

    with pytest.raises(InputError, match="points outside") as caught:
        read_volume(archive)

    assert caught.value.source == str(archive) and entry in str(caught.value)
    assert not (tmp_path / "evil.dcm").exists()


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
        opened.writestr("IM0001", bytes(40 * 2**20))  # 40 MiB of zeros: about 40 KiB compressed
    with pytest.raises(InputError, match="zip bomb"):
        read_volume(archive)


def test_a_zip_without_dicom_names_the_zip(tmp_path: Path) -> None:
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("notes.txt", b"no images")
    with pytest.raises(InputError) as caught:
        read_volume(archive)
    assert caught.value.source == str(archive) and "no DICOM series" in caught.value.problem


# ---- multi-frame enhanced objects -------------------------------------------------------------------------------
def legacy_converted(datasets: list[Dataset], path: Path) -> Path:
    """highdicom's real converter: a Legacy Converted Enhanced CT object of the single-frame ``datasets``."""
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(datasets, generate_uid(), 4, generate_uid(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    converted.save_as(path)
    return path


@pytest.mark.parametrize("intercepts", ((-1024.0,), (-1024.0, -1000.0)), ids=("shared-rescale", "per-frame-rescale"))
def test_a_multiframe_object_reads_as_its_single_frame_series(tmp_path: Path, intercepts) -> None:
    datasets = ct_datasets(stored(5), intercepts=intercepts)
    save(datasets, tmp_path / "series")
    path = legacy_converted(datasets, tmp_path / "enhanced" / "ct.dcm")
    groups = pydicom.dcmread(path).PerFrameFunctionalGroupsSequence[0]
    assert ("PixelValueTransformationSequence" in groups) == (len(intercepts) > 1), "the rescale path under test"

    for source in (path, path.parent):  # the file, or a folder holding it
        volume = read_volume(source)
        assert_volume_is(volume, gdcm_read(tmp_path / "series"))
        assert volume.dicom_files == (path,)


def test_a_multiframe_object_with_a_missing_frame_is_refused(tmp_path: Path) -> None:
    datasets = ct_datasets(stored(6))
    path = legacy_converted(datasets[:7] + datasets[8:], tmp_path / "ct.dcm")
    with pytest.raises(InputError, match="missing slices"):
        read_volume(path)


# ---- what is no image volume ------------------------------------------------------------------------------------
def segmentation(datasets: list[Dataset]) -> Dataset:
    mask = (np.stack([ds.pixel_array for ds in datasets]) > 2000).astype(np.uint8)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="bright", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=9,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")


def structured_report(datasets: list[Dataset]) -> Dataset:
    finding = hd.sr.TextContentItem(name=codes.DCM.Finding, value="no finding",
                                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    root = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = [finding]
    return hd.sr.ComprehensiveSR(evidence=datasets, content=root, series_instance_uid=generate_uid(),
                                 series_number=10, sop_instance_uid=generate_uid(), instance_number=1,
                                 manufacturer="test")


@pytest.fixture
def non_images(tmp_path: Path) -> dict[str, Path]:
    """Folders holding only a SEG, only a SR, only a single localizer, and all three."""
    datasets = ct_datasets(stored(7, (4, 16, 16)))
    localizer = ct_datasets(stored(8, (1, 16, 16)), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))[0]
    folders = {}
    for name, objects in (("seg", [segmentation(datasets)]), ("sr", [structured_report(datasets)]),
                          ("localizer", [localizer]),
                          ("all", [segmentation(datasets), structured_report(datasets), localizer])):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for index, ds in enumerate(objects):
            ds.save_as(folders[name] / f"obj{index}.dcm", enforce_file_format=True)
    return folders


@pytest.mark.parametrize("kind, said", (("seg", "SEG (Segmentation) [not an image]"),
                                        ("sr", "SR (Comprehensive SR) [not an image]"),
                                        ("localizer", "CT localizer, 1 slice"),
                                        ("all", "SEG (Segmentation)")))
def test_a_folder_of_non_images_is_one_line_saying_what_it_holds(non_images: dict, kind: str, said: str) -> None:
    with pytest.raises(InputError) as caught:
        read_volume(non_images[kind])
    assert caught.value.source == str(non_images[kind])
    assert "\n" not in str(caught.value) and "holds no image volume" in caught.value.problem
    assert said in caught.value.problem
    if kind == "all":
        assert "SR (Comprehensive SR)" in caught.value.problem and "localizer" in caught.value.problem


def test_non_images_beside_a_series_are_skipped(study: dict, non_images: dict) -> None:
    for source in non_images["all"].iterdir():
        (study["root"] / source.name).write_bytes(source.read_bytes())
    assert read_volume(study["root"]).shape == SHAPE


def test_a_series_uid_of_a_non_image_says_what_it_is(non_images: dict) -> None:
    seg_uid = pydicom.dcmread(non_images["seg"] / "obj0.dcm").SeriesInstanceUID
    with pytest.raises(InputError, match=f"series {seg_uid} \\(SEG \\(Segmentation\\)\\) is no image volume"):
        read_volume(non_images["seg"], series_uid=seg_uid)


def _positions(change: str) -> np.ndarray:
    normal = np.cross(TILTED_ROW, TILTED_COLUMN)
    along = np.arange(SHAPE[0], dtype=float) * 2.5
    if change == "missing slice":
        along[8:] += 2.5
    elif change == "two echoes":
        along = np.repeat(along[: SHAPE[0] // 2], 2)
    positions = along[:, None] * normal
    if change == "gantry tilt":  # each slice 0.5 mm further along the column direction: 11 degrees
        positions += np.arange(SHAPE[0])[:, None] * 0.5 * np.asarray(TILTED_COLUMN)
    return positions


@pytest.mark.parametrize("change, said", (("missing slice", "missing slices"), ("two echoes", "only 8 positions"),
                                          ("gantry tilt", "sheared"), ("mixed orientations", "2 different orient")))
def test_a_series_that_cannot_be_one_volume_is_refused(tmp_path: Path, change: str, said: str) -> None:
    datasets = ct_datasets(stored(9), positions=_positions(change))
    if change == "mixed orientations":
        for ds in datasets[::2]:
            ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    save(datasets, tmp_path / "broken")
    with pytest.raises(InputError, match=said) as caught:
        read_volume(tmp_path / "broken")
    assert "\n" not in str(caught.value)


# ---- through the command line -----------------------------------------------------------------------------------
def test_predict_on_a_folder_of_non_images_exits_2_with_one_line(non_images: dict, tmp_path: Path, ct_model: Path,
                                                                 run_cli) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(predict_args(non_images["all"], out, ct_model))
    assert code == 2
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith(ERROR_PREFIX) and "holds no image volume" in line and "SR (Comprehensive SR)" in line
    assert not out.exists() or not any(out.iterdir())


def test_predict_series_uid_segments_the_series_asked_for(study: dict, tmp_path: Path, ct_model: Path,
                                                          run_cli) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(predict_args(study["root"], out, ct_model, "--series-uid", study["small"]))
    assert code == 0, err
    written = sitk.ReadImage(str(out / "study.nii.gz"))
    assert written.GetSize() == (30, 32, 6)

    code, _, err = run_cli(predict_args(study["root"], tmp_path / "out2", ct_model, "--series-uid", "1.2.3"))
    assert code == 2 and "holds no series 1.2.3" in err and study["small"] in err


def test_batch_records_a_non_image_folder_as_failed_and_reads_a_nested_study(study: dict, non_images: dict,
                                                                             tmp_path: Path, ct_model: Path,
                                                                             run_cli) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    zip_folder(study["root"], cases / "zipped.zip")
    study["root"].rename(cases / "study")
    non_images["sr"].rename(cases / "report")
    out = tmp_path / "out"

    code, _, err = run_cli(["batch", "-i", cases, "-o", out, "-m", ct_model, "--preset", "preview", "-device", "cpu",
                            "--disable_progress_bar"])

    assert code == 3, err  # some case failed
    records = {r["case"]: r for r in json.loads((out / "batch_summary.json").read_text(encoding="utf-8"))["cases"]}
    assert records["study"]["status"] == "done" and sitk.ReadImage(str(out / "study.nii.gz")).GetSize() == (40, 48, 16)
    assert records["zipped"]["status"] == "done", "a zip of a DICOM folder is a case, named after the zip"
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(out / "zipped.nii.gz"))) ==
            sitk.GetArrayFromImage(sitk.ReadImage(str(out / "study.nii.gz")))).all()
    assert records["report"]["status"] == "failed"
    assert "holds no image volume" in records["report"]["reason"] and "SR (Comprehensive SR)" in records["report"]["reason"]

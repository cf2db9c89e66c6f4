"""DICOM outputs: ``--output-type dicom-seg`` and ``dicom-rtstruct`` of ``tilewise predict`` (and ``batch``) on a
DICOM series written with SimpleITK, read back with highdicom, pydicom and rt-utils and compared with the NIfTI
output of the same run, voxel for voxel (SEG) and by Dice (RTSTRUCT contours); the BINARY SEG and the RTSTRUCT
checked by dciodvfy (Debian's dicom3tools) where it is installed."""
from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from rt_utils import RTStructBuilder
from tilewise.engine.commands.cli import main
from tilewise.engine.data.dicom.seg import AlgorithmInfo, write_dicom_seg
from tilewise.engine.data.dicom.source import DicomSource
from tilewise.engine.data.label_colors import label_rgb
from tilewise.engine.data.readers import read_volume
from tilewise.engine.data.dicom.rtstruct import write_rtstruct
from tilewise.engine.errors import InputError

from dicom_factory import resampled_sample, write_ct_series

FAST = ("-m", "demo", "--preset", "preview", "-device", "cpu", "--backend", "torch")  # no OpenVINO conversion
NAMES = {1: "grey_matter", 2: "white_matter", 3: "csf"}  # the demo model's dataset.json
TYPES = {1: "Gray Matter", 2: "White Matter", 3: "Cerebrospinal Fluid"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 64 x 64 x 24 series of the sample (3.5 mm pixels, 4 mm slices) segmented by the demo model three times:
    NIfTI, DICOM SEG and RTSTRUCT output."""
    root = tmp_path_factory.mktemp("dicom_out")
    series = root / "brain"
    write_ct_series(resampled_sample((64, 64, 24), (3.5, 3.5, 4.0)), series)
    out = root / "out"
    for output_type in ("same", "dicom-seg", "dicom-rtstruct"):
        assert main(["predict", "-i", str(series), "-o", str(out), *FAST, "--output-type", output_type, "-q"]) == 0
    nifti = sitk.ReadImage(str(out / "brain.nii.gz"))
    sources = {}
    for path in series.iterdir():
        dataset = pydicom.dcmread(path)
        sources[tuple(np.round(np.array(dataset.ImagePositionPatient, float), 3))] = dataset
    # the source file of each NIfTI slice, found by its position (not by Tilewise's own file order)
    by_slice = [sources[tuple(np.round(nifti.TransformIndexToPhysicalPoint((0, 0, k)), 3))]
                for k in range(nifti.GetDepth())]
    return {"series": series, "out": out, "labels": sitk.GetArrayFromImage(nifti), "by_slice": by_slice}


def test_the_run_segments_every_label(run: dict) -> None:
    assert set(np.unique(run["labels"])) == {0, 1, 2, 3}
    assert sorted(p.name for p in run["out"].iterdir()) == ["brain.nii.gz", "brain_rtstruct.dcm", "brain_seg.dcm"]


def test_seg_references_the_source_series_frame_by_frame(run: dict) -> None:
    seg = pydicom.dcmread(run["out"] / "brain_seg.dcm")
    first = run["by_slice"][0]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"  # the default: every PACS and viewer reads it
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3]  # from 1, no background segment
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.PatientID == first.PatientID
    assert seg.StudyID == first.StudyID and seg.StudyDate == first.StudyDate
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == \
        {d.SOPInstanceUID for d in run["by_slice"]}
    by_uid = {d.SOPInstanceUID: d for d in run["by_slice"]}
    assert 0 < seg.NumberOfFrames <= 3 * len(run["by_slice"])  # one frame per segment and slice it is on
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, np.array(by_uid[uid].ImagePositionPatient, float), atol=1e-3)


def test_seg_frames_equal_the_nifti_labels_voxel_for_voxel(run: dict) -> None:
    seg = hd.seg.segread(run["out"] / "brain_seg.dcm")
    pixels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in run["by_slice"]], combine_segments=True)
    np.testing.assert_array_equal(pixels, run["labels"])


def test_seg_segments_carry_names_colours_codes_and_the_algorithm(run: dict) -> None:
    seg = hd.seg.segread(run["out"] / "brain_seg.dcm")
    segments = {s.SegmentNumber: s for s in seg.SegmentSequence if s.SegmentNumber > 0}
    assert sorted(segments) == [1, 2, 3]
    version = metadata.version("tilewise")
    for number, segment in segments.items():
        assert segment.SegmentLabel == NAMES[number]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == TYPES[number]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        rgb = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb()
        assert np.abs(np.array(rgb, int) - label_rgb(number)).max() <= 1
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "TilewiseDemoBrain 3d_fullres"
        assert algorithm.AlgorithmVersion == version
        assert "folds=0" in algorithm.AlgorithmParameters and "preset=preview" in algorithm.AlgorithmParameters
    assert seg.Manufacturer == "Tilewise" and seg.SoftwareVersions == f"Tilewise {version}"


def test_rtstruct_contours_rasterise_back_to_the_labels(run: dict) -> None:
    structure = RTStructBuilder.create_from(str(run["series"]), str(run["out"] / "brain_rtstruct.dcm"))
    assert structure.ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == \
        run["by_slice"][0].FrameOfReferenceUID
    assert structure.get_roi_names() == [NAMES[v] for v in (1, 2, 3)]
    colours = {roi.ReferencedROINumber: [int(c) for c in roi.ROIDisplayColor]
               for roi in structure.ds.ROIContourSequence}
    assert [colours[n] for n in (1, 2, 3)] == [list(label_rgb(v)) for v in (1, 2, 3)]
    order = {d.SOPInstanceUID: k for k, d in enumerate(run["by_slice"])}
    slices = [order[d.SOPInstanceUID] for d in structure.series_data]  # rt-utils' slice i is NIfTI slice slices[i]
    for value, name in NAMES.items():
        mask = np.zeros_like(run["labels"], bool)
        mask[slices] = np.moveaxis(structure.get_roi_mask_by_name(name), -1, 0)  # square: (rows, columns)
        truth = run["labels"] == value
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice >= 0.95, (name, dice)


def test_a_dicom_output_type_needs_a_dicom_input(run: dict, tmp_path: Path, run_cli) -> None:
    code, _, err = run_cli(["predict", "-i", run["out"] / "brain.nii.gz", "-o", tmp_path / "o", *FAST,
                            "--output-type", "dicom-seg"])
    assert code == 2
    assert "--output-type dicom-seg needs a DICOM input" in err and "brain.nii.gz" in err
    assert not (tmp_path / "o").exists()


def test_a_series_without_a_frame_of_reference_is_refused_before_the_work(run: dict, tmp_path: Path, run_cli) -> None:
    """A series whose files lack the Frame of Reference UID cannot be referenced: one line naming the file and the
    attribute, exit 2, nothing written (the check runs after reading, before the sliding window)."""
    series = tmp_path / "no_frame"
    for index, path in enumerate(sorted(run["series"].iterdir())):
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        series.mkdir(exist_ok=True)
        dataset.save_as(series / f"{index:03d}.dcm")
    for output_type in ("dicom-seg", "dicom-rtstruct"):
        code, _, err = run_cli(["predict", "-i", series, "-o", tmp_path / "o", *FAST, "--output-type", output_type,
                                "--verbose"])
        assert code == 2, err
        [line] = [line for line in err.splitlines() if "FrameOfReferenceUID" in line]
        assert str(series) in line and "Traceback" not in err
        assert "tiles," not in err, "refused before the sliding window (--verbose prints each case's tiles after it)"
        assert not list((tmp_path / "o").glob("*.dcm"))


def test_a_missing_extra_is_one_line_naming_the_install(run: dict, tmp_path: Path) -> None:
    """highdicom made unimportable in a fresh interpreter (as if not installed): refused before any work."""
    code = ("import sys; sys.modules['highdicom'] = None\n"
            "from tilewise.engine.commands.cli import main\n"
            f"sys.exit(main(['predict', '-i', {str(run['series'])!r}, '-o', {str(tmp_path / 'o')!r}, '-m', 'demo', "
            "'--output-type', 'dicom-seg']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tilewise: error: --output-type dicom-seg needs the DICOM extra (highdicom is not installed); install it "
        'with: pip install "tilewise[dicom]"']
    assert not (tmp_path / "o").exists()


def test_a_label_map_off_the_series_grid_is_refused(run: dict, tmp_path: Path) -> None:
    volume = read_volume(run["series"])
    labels = run["labels"]
    with pytest.raises(InputError, match="does not match the image"):
        write_dicom_seg(labels[:-1], volume, NAMES, tmp_path / "a_seg.dcm", AlgorithmInfo("m"))
    geometry = volume.geometry
    shifted = DicomSource(type(geometry)(geometry.size, geometry.spacing,
                                         (geometry.origin[0], geometry.origin[1], geometry.origin[2] + 1.0),
                                         geometry.direction), volume.dicom_files)
    with pytest.raises(InputError, match="lies on no frame"):
        write_dicom_seg(labels, shifted, NAMES, tmp_path / "b_seg.dcm", AlgorithmInfo("m"))
    with pytest.raises(InputError, match="lies on no frame"):
        write_rtstruct(labels, shifted, NAMES, tmp_path / "b_rtstruct.dcm", AlgorithmInfo("m"))
    with pytest.raises(InputError, match=r"value\(s\) \[3\] have no name"):
        write_dicom_seg(labels, volume, {1: "a", 2: "b"}, tmp_path / "c_seg.dcm", AlgorithmInfo("m"))
    assert list(tmp_path.iterdir()) == []


def test_labelmap_seg_and_a_multi_frame_source(run: dict, tmp_path: Path) -> None:
    """LABELMAP (on request) holds the same labels; so does a SEG on a multi-frame image whose frames run against
    the label map's slices (a legacy-converted enhanced CT of the same series, frames reversed)."""
    volume = read_volume(run["series"])
    labels = run["labels"]
    write_dicom_seg(labels, volume, NAMES, tmp_path / "map_seg.dcm", AlgorithmInfo("m"), segmentation_type="labelmap")
    labelmap = hd.seg.segread(tmp_path / "map_seg.dcm")
    assert labelmap.SegmentationType == "LABELMAP" and labelmap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    pixels = labelmap.get_pixels_by_source_instance([d.SOPInstanceUID for d in run["by_slice"]],
                                                    combine_segments=True)
    np.testing.assert_array_equal(pixels, labels)
    with pytest.raises(InputError, match="unknown DICOM SEG type 'fractional'"):
        write_dicom_seg(labels, volume, NAMES, tmp_path / "f_seg.dcm", AlgorithmInfo("m"), "fractional")
    frames = hd.legacy.LegacyConvertedEnhancedCTImage(run["by_slice"][::-1], generate_uid(), 2, generate_uid(), 1)
    frames.save_as(tmp_path / "enhanced.dcm")
    source = DicomSource(volume.geometry, (tmp_path / "enhanced.dcm",))
    write_dicom_seg(labels, source, NAMES, tmp_path / "enhanced_seg.dcm", AlgorithmInfo("m"))
    seg = hd.seg.segread(tmp_path / "enhanced_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        frames.SOPInstanceUID
    by_frame = seg.get_pixels_by_source_frame(frames.SOPInstanceUID, list(range(1, len(labels) + 1)),
                                              combine_segments=True)
    np.testing.assert_array_equal(by_frame[::-1], labels)


def test_rtstruct_refuses_non_square_pixels(tmp_path: Path) -> None:
    write_ct_series(resampled_sample((16, 12, 4), (8.0, 12.0, 10.0)), tmp_path / "s")
    volume = read_volume(tmp_path / "s")
    labels = np.zeros(volume.shape, np.uint8)
    labels[1:3, 3:8, 4:10] = 1
    with pytest.raises(InputError, match="square pixels"):
        write_rtstruct(labels, volume, NAMES, tmp_path / "x_rtstruct.dcm", AlgorithmInfo("m"))


def test_batch_writes_the_seg_predict_writes(run: dict, tmp_path: Path, run_cli) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "brain").symlink_to(run["series"], target_is_directory=True)
    code, _, err = run_cli(["batch", "-i", folder, "-o", tmp_path / "out", *FAST, "--output-type", "dicom-seg",
                            "--seg-type", "labelmap", "-q"])
    assert code == 0, err
    uids = [d.SOPInstanceUID for d in run["by_slice"]]
    batch = hd.seg.segread(tmp_path / "out" / "brain_seg.dcm")
    assert batch.SegmentationType == "LABELMAP"
    np.testing.assert_array_equal(batch.get_pixels_by_source_instance(uids, combine_segments=True), run["labels"])


TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")


@pytest.fixture(scope="module")
def bare(run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The series without its Type 2 patient and study attributes (as some sources send them), and a BINARY SEG
    and an RTSTRUCT of the run's labels on it."""
    root = tmp_path_factory.mktemp("bare")
    series = root / "bare"
    series.mkdir()
    for path in run["series"].iterdir():
        dataset = pydicom.dcmread(path)
        for keyword in TYPE2:
            delattr(dataset, keyword)
        dataset.save_as(series / path.name)
    volume = read_volume(series)
    outputs = (write_dicom_seg(run["labels"], volume, NAMES, root / "bare_seg.dcm", AlgorithmInfo("m")),
               write_rtstruct(run["labels"], volume, NAMES, root / "bare_rtstruct.dcm", AlgorithmInfo("m")))
    return {"series": series, "outputs": outputs}


def test_type2_attributes_are_present_also_when_the_source_lacks_them(run: dict, bare: dict) -> None:
    """Every Type 2 patient and study attribute is in the SEG and the RTSTRUCT (empty when the source had none), and
    the RTSTRUCT has its Frame of Reference and every contour coordinate as a valid decimal string."""
    for path in (run["out"] / "brain_seg.dcm", run["out"] / "brain_rtstruct.dcm", *bare["outputs"]):
        dataset = pydicom.dcmread(path)
        assert all(keyword in dataset for keyword in TYPE2), path.name
    structure = pydicom.dcmread(run["out"] / "brain_rtstruct.dcm")
    assert structure.FrameOfReferenceUID == run["by_slice"][0].FrameOfReferenceUID
    assert "PositionReferenceIndicator" in structure and structure.StudyID == run["by_slice"][0].StudyID
    values = [value for roi in structure.ROIContourSequence for contour in roi.ContourSequence
              for value in contour.ContourData]
    assert values and all(len(str(value)) <= 16 for value in values)
    seg = hd.seg.segread(bare["outputs"][0])
    pixels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in run["by_slice"]], combine_segments=True)
    np.testing.assert_array_equal(pixels, run["labels"])


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_the_binary_seg_and_the_rtstruct(run: dict, bare: dict) -> None:
    """dicom3tools' validator: no error (every Type 1 and Type 2 attribute present, valid values) in the BINARY SEG
    and the RTSTRUCT, from a complete source and from one without its Type 2 patient and study attributes."""
    for path in (run["out"] / "brain_seg.dcm", run["out"] / "brain_rtstruct.dcm", *bare["outputs"]):
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
        report = done.stdout + done.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors[:5]}"
        assert ("Segmentation" if path.name.endswith("_seg.dcm") else "RTStructureSet") in report

"""Saving: where Save starts (the input's folder if the user's, else their documents), the input's format under a
clean '<case>_segmentation' name that follows the file type picked, and napari's File > Save Selected Layers
offering Tilewise's writer first for a Tilewise result."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import model_factory
import SimpleITK as sitk
from npe2 import PluginManager
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QDialogButtonBox
from tilewise.gui import contributions
from tilewise.gui.flows import save as save_flow
from tilewise.gui.panels.dialogs import LabelsSaveDialog, ask_save_path
from tilewise.gui.widget import TilewiseWidget
from modal_dialogs import when_shown

RUN_TIMEOUT_MS = 180_000
SPACING = (0.8, 0.9, 2.5)  # SimpleITK (x, y, z) order, mm
ORIGIN = (12.0, -30.0, 4.5)
ROTATED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's documents folder, in a home folder of the test's own."""
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home / "Documents"


@pytest.fixture
def saving(documents: Path, gui, monkeypatch: pytest.MonkeyPatch):
    """The conftest viewer, built once the documents folder is in place, with 'preview' chosen; Save shows the real
    Save dialog (answered with ``when_shown``), not the paths of conftest's ``dialogs``."""
    monkeypatch.setattr(save_flow, "ask_save_path", ask_save_path)
    gui[1].settings_panel.select_preset("preview")
    return gui


def _open(qtbot, widget: TilewiseWidget, path: Path) -> list:
    with qtbot.waitSignal(widget.image_opened, timeout=60_000) as blocker:
        widget.open_image(path)
    assert blocker.args[0], f"{path} was opened"
    return blocker.args[0]


def _segment(qtbot, widget: TilewiseWidget, model: Path, case: Path) -> None:
    widget.model_panel.select(model)
    _open(qtbot, widget, case)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run_panel.run_button.click()
    assert blocker.args == ["done"]


def _click_save(dialog: LabelsSaveDialog) -> None:
    dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.Save).click()


def test_save_proposes_the_inputs_folder_and_format_and_follows_the_type_picked(saving, qtbot, ct_model: Path,
                                                                                tmp_path: Path) -> None:
    _, widget = saving
    case = model_factory.make_case(tmp_path / "scans" / "ct.nrrd", "3d", spacing=SPACING, origin=ORIGIN,
                                   direction=ROTATED, seed=2)
    _segment(qtbot, widget, ct_model, case)
    seen: dict[str, object] = {}

    def use_the_dialog(dialog: LabelsSaveDialog) -> None:  # the person looks, tries other types, saves as NRRD
        edit, combo = dialog.file_name_edit(), dialog.findChild(QComboBox, "fileTypeCombo")
        seen["start"] = (dialog.directory().absolutePath(), edit.text(), dialog.selectedNameFilter())
        for key, name in ((Qt.Key_Up, "NIfTI"), (Qt.Key_Down, "NRRD"), (Qt.Key_Down, "MetaImage"),
                          (Qt.Key_Up, "NRRD again")):
            qtbot.keyClick(combo, key)
            seen[name] = edit.text()
        _click_save(dialog)

    when_shown(LabelsSaveDialog, use_the_dialog)
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        widget.review.save_button.click()
    assert seen["start"] == (str(case.parent), "ct_segmentation.nrrd", "NRRD (*.nrrd)")
    assert seen["NIfTI"] == "ct_segmentation.nii.gz" and seen["MetaImage"] == "ct_segmentation.mha"
    assert seen["NRRD"] == seen["NRRD again"] == "ct_segmentation.nrrd", "never 'ct_segmentation.nii.nrrd'"

    target = case.parent / "ct_segmentation.nrrd"
    assert blocker.args == [str(target)]
    assert sorted(p.name for p in case.parent.iterdir()) == ["ct.nrrd", "ct_segmentation.nrrd"]
    written, reference = sitk.ReadImage(str(target)), sitk.ReadImage(str(case))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), np.asarray(widget.result_layer.data))
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, getter)(), getattr(reference, getter)(), atol=1e-6)


@pytest.mark.parametrize(("typed", "file_type", "expected"), [
    ("mine", 1, "mine.nrrd"),                 # no suffix: the type picked
    ("mine.nii.nrrd", 1, "mine.nrrd"),        # stray suffixes go
    ("mine.mha", 0, "mine.mha"),              # a type typed wins over the list's
    ("brain.v2", 0, "brain.v2.nii.gz"),       # a dot in the name is no file type
])
def test_typed_names_get_one_clean_suffix(qtbot, tmp_path: Path, typed: str, file_type: int, expected: str) -> None:
    def type_a_name(dialog: LabelsSaveDialog) -> None:
        combo = dialog.findChild(QComboBox, "fileTypeCombo")
        for _ in range(file_type):
            qtbot.keyClick(combo, Qt.Key_Down)
        edit = dialog.file_name_edit()
        edit.clear()
        qtbot.keyClicks(edit, typed)
        _click_save(dialog)

    when_shown(LabelsSaveDialog, type_a_name)
    assert ask_save_path(None, tmp_path / "ct_segmentation.nii.gz") == str(tmp_path / expected)


def test_typing_a_folders_name_goes_into_it(qtbot, tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    went_into: list[str] = []

    def type_names(dialog: LabelsSaveDialog) -> None:
        edit = dialog.file_name_edit()
        edit.clear()
        qtbot.keyClicks(edit, "exports")
        _click_save(dialog)  # not 'exports.nii.gz': the dialog opens the folder
        went_into.append(dialog.directory().absolutePath())
        edit.clear()
        qtbot.keyClicks(edit, "mine")
        _click_save(dialog)

    when_shown(LabelsSaveDialog, type_names)
    assert ask_save_path(None, tmp_path / "ct_segmentation.nii.gz") == str(tmp_path / "exports" / "mine.nii.gz")
    assert went_into == [str(tmp_path / "exports")]


def test_save_starts_in_the_users_folders_never_the_installation(saving, qtbot, tmp_path: Path,
                                                                 documents: Path) -> None:
    viewer, widget = saving
    files = widget.files
    [sample] = _open(qtbot, widget, contributions.sample_path())
    assert files.suggested_save_path([sample], None) == documents / "sample_t1_segmentation.nii.gz", \
        "the bundled sample's folder belongs to the installation"

    mr = model_factory.make_case(tmp_path / "study_a" / "mr.nii.gz", "3d", seed=3)
    [image] = _open(qtbot, widget, mr)
    assert files.suggested_save_path([image], None) == mr.parent / "mr_segmentation.nii.gz"

    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="mask", metadata={
        "tilewise_geometry": image.metadata["tilewise_geometry"], "tilewise_sources": [str(mr)]})
    exports = tmp_path / "exports"
    exports.mkdir()
    with qtbot.waitSignal(widget.saved, timeout=60_000):
        assert files.save(labels, exports / "mask.nii.gz") is not None
    assert files.suggested_save_path([image], None) == exports / "mr_segmentation.nii.gz", \
        "for this study again: where its labels went last"
    assert files.suggested_save_path([], labels) == exports / "mr_segmentation.nii.gz"

    other = model_factory.make_case(tmp_path / "study_b" / "ct.mha", "3d", seed=4)
    [second] = _open(qtbot, widget, other)
    assert files.suggested_save_path([second], None) == other.parent / "ct_segmentation.mha", \
        "an input from another folder: its own folder, not the one saved to last"
    assert files.suggested_save_path([sample], None).parent == documents
    unsaved = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="drawn")
    assert files.suggested_save_path([unsaved], None) == exports / "drawn_segmentation.nii.gz", \
        "an image from no file: the folder saved to last"


def test_napari_offers_tilewise_writer_first_for_a_tilewise_result(saving, qtbot, ct_model: Path,
                                                                    tmp_path: Path) -> None:
    from napari.plugins._npe2 import (
        file_extensions_string_for_layers,  # what File > Save Selected Layers lists
    )

    viewer, widget = saving
    manager = PluginManager.instance()
    manager.discover()
    _segment(qtbot, widget, ct_model, model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", spacing=SPACING))
    result = widget.result_layer

    viewer.layers.selection.active = result  # the person selects the result
    first = next(manager.iter_compatible_writers(["labels"]))
    assert first.command == "tilewise.write_labels"
    filters, _ = file_extensions_string_for_layers([result])
    assert filters.split(";;")[0].startswith("Tilewise Segmentation (Tilewise) (*.nii.gz")
    writer, path = manager.get_writer(str(tmp_path / "seg"), ["labels"])
    assert writer.command == "tilewise.write_labels" and path == str(tmp_path / "seg.nii.gz")
    assert viewer.layers.save(str(tmp_path / "seg"), selected=True) == [str(tmp_path / "seg.nii.gz")]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))),
                                  np.asarray(result.data))

    drawn = viewer.add_labels(np.zeros((5, 6), np.uint8), name="drawn")  # labels Tilewise did not make
    assert viewer.layers.selection.active is drawn
    assert next(manager.iter_compatible_writers(["labels"])).command == "napari.write_labels"
    writer, path = manager.get_writer(str(tmp_path / "drawn"), ["labels"])
    assert writer.command == "napari.write_labels" and path == str(tmp_path / "drawn.tif")


def test_a_result_of_a_dicom_series_saves_as_dicom_seg(saving, qtbot, tmp_path: Path) -> None:
    """Save as DICOM SEG: offered for labels made from a DICOM series (and only for them), written on its own
    thread, its frames equal to the layer's labels and referencing the series; a NIfTI input's labels are refused
    with a message instead."""
    import highdicom as hd
    import pydicom
    from dicom_factory import resampled_sample, write_ct_series
    from tilewise.gui.panels.dialogs import DICOM_LABELMAP_FILTER, DICOM_SEG_FILTER, SavePath, chosen_save_path
    from tilewise.resources import demo_model_dir

    viewer, widget = saving
    series = tmp_path / "brain"
    write_ct_series(resampled_sample((48, 48, 16), (4.5, 4.5, 5.5)), series)
    _segment(qtbot, widget, demo_model_dir(), series)
    layer = widget.result_layer
    dialog = LabelsSaveDialog(widget, widget.suggested_save_path(layer), dicom_seg=True)
    assert DICOM_SEG_FILTER in dialog.nameFilters() and DICOM_LABELMAP_FILTER in dialog.nameFilters()
    assert chosen_save_path(dialog).seg_type == "binary"  # the default: BINARY, which every PACS reads
    dialog.selectNameFilter(DICOM_LABELMAP_FILTER)
    assert chosen_save_path(dialog).seg_type == "labelmap"
    dialog.deleteLater()
    assert DICOM_SEG_FILTER not in LabelsSaveDialog(widget, tmp_path / "x.nii.gz").nameFilters()

    target = tmp_path / "out" / "brain_segmentation.dcm"
    target.parent.mkdir()
    with qtbot.waitSignal(widget.saved, timeout=60_000) as blocker:
        assert widget.save_labels(target)
    assert blocker.args == [str(target)]
    seg = hd.seg.segread(target)
    assert seg.SegmentationType == "BINARY"
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in series.iterdir()}
    # the layer's z slice of each source instance, by its position along the slice normal
    geometry = layer.metadata["tilewise_geometry"]
    slices = {}
    for uid, path in sources.items():
        position = np.array(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, float)
        slices[uid] = int(round(np.dot(position - np.array(geometry.origin), np.array(geometry.direction[2::3]))
                                / geometry.spacing[2]))
    uids = sorted(sources, key=slices.get)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               ignore_spatial_locations=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(pixels, np.asarray(layer.data))
    assert np.asarray(layer.data).max() > 0
    labelmap = SavePath(tmp_path / "out" / "brain_labelmap.dcm")  # what the dialog returns for "label map"
    labelmap.seg_type = "labelmap"
    with qtbot.waitSignal(widget.saved, timeout=60_000):
        assert widget.save_labels(labelmap)
    mapped = hd.seg.segread(labelmap)
    assert mapped.SegmentationType == "LABELMAP"
    np.testing.assert_array_equal(mapped.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, ignore_spatial_locations=True,
        skip_overlap_checks=True), np.asarray(layer.data))
    assert seg.FrameOfReferenceUID == pydicom.dcmread(next(series.iterdir())).FrameOfReferenceUID
    assert {s.SegmentLabel for s in seg.SegmentSequence if s.SegmentNumber > 0} == \
        {"grey_matter", "white_matter", "csf"}
    assert "preset=preview" in seg.SegmentSequence[-1].SegmentationAlgorithmIdentificationSequence[0]\
        .AlgorithmParameters

    nifti = tmp_path / "t1.nii.gz"
    sitk.WriteImage(resampled_sample((48, 48, 16), (4.5, 4.5, 5.5)), str(nifti))
    _segment(qtbot, widget, demo_model_dir(), nifti)
    reported = []
    widget.reporter.report = lambda title, text: reported.append(text)  # the text, without the modal dialog
    assert not widget.save_labels(tmp_path / "out" / "t1.dcm")
    assert reported and "needs labels made from a DICOM series" in reported[0]
    assert not (tmp_path / "out" / "t1.dcm").exists()

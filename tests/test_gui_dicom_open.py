"""DICOM in the panel: Open image… lists DICOM files (with or without an extension) and opens a whole series from
any one of its files or from its folder, the largest series when the folder holds several, as the CLI reads it."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import SimpleITK as sitk
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QLineEdit
from tilewise.engine import Geometry
from tilewise.gui.controllers.files import SETTINGS_OPEN_FOLDER
from tilewise.gui.geometry import geometry_from_layer
from tilewise.gui.panels.dialogs import ImageFileDialog
from modal_dialogs import when_shown

SPACING = (0.7, 0.6, 2.5)  # SimpleITK (x, y, z) order, mm
ORIGIN = (10.0, -20.0, 30.0)
FLIPPED_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # a rotation: DICOM slices need one


def write_series(folder: Path, image: sitk.Image, uid: str, name: Callable[[int], str]) -> list[Path]:
    """Write ``image`` as a DICOM CT series (one file per slice, named ``name(index)``) with series UID ``uid``."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # names without a DICOM extension too
    rows = image.GetDirection()
    orientation = "\\".join(str(v) for v in (rows[0], rows[3], rows[6], rows[1], rows[4], rows[7]))
    files = []
    for index in range(image.GetDepth()):
        slice_image = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", uid + ".0"), ("0020|000e", uid),
                           ("0020|0037", orientation), ("0020|0013", str(index + 1)),
                           ("0018|0050", str(image.GetSpacing()[2])),
                           ("0020|0032", "\\".join(str(v) for v in position))):
            slice_image.SetMetaData(tag, value)
        files.append(folder / name(index))
        writer.SetFileName(str(files[-1]))
        writer.Execute(slice_image)
    return files


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, sitk.Image]:
    """A folder with a 7-slice series in extension-less files, a smaller 3-slice series in .dcm files and a text
    file; returns the folder and the larger series' image as written."""
    array = np.random.default_rng(7).integers(-1000, 1500, (7, 20, 24)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(FLIPPED_XY)
    folder = tmp_path / "study" / "series"
    write_series(folder, image, "1.2.826.0.1.3680043.2.1125.77.1", lambda i: f"IM{i:04d}")
    scout = sitk.GetImageFromArray(array[:3, :10, :12].copy())
    scout.SetSpacing((1.5, 1.5, 5.0))
    write_series(folder, scout, "1.2.826.0.1.3680043.2.1125.77.2", lambda i: f"scout{i:03d}.dcm")
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    return folder, image


def answer_open_dialog(act: Callable[[ImageFileDialog], None]) -> list[ImageFileDialog]:
    """Run ``act`` on the open dialog as soon as it shows; returns a list that then holds the dialog."""
    return when_shown(ImageFileDialog, act)


def listed(dialog: ImageFileDialog, folder: Path) -> set[str]:
    """The names the dialog's file list shows in ``folder``."""
    proxy = dialog.proxyModel()
    root = proxy.mapFromSource(proxy.sourceModel().index(str(folder)))
    return {proxy.index(row, 0, root).data() for row in range(proxy.rowCount(root))}


def assert_is_the_series(layer, image: sitk.Image) -> None:
    np.testing.assert_array_equal(np.asarray(layer.data), sitk.GetArrayFromImage(image).astype(np.float32))
    written = Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert geometry_from_layer(layer).same_as(written), geometry_from_layer(layer)
    corner = image.TransformIndexToPhysicalPoint((23, 19, 6))
    np.testing.assert_allclose(layer.data_to_world((6, 19, 23)), np.asarray(corner)[::-1], atol=1e-3)


def test_the_open_dialog_lists_dicom_files_with_and_without_extension(qtbot, study) -> None:
    folder, _ = study
    uid_named = folder / "1.2.840.10008.5.1.4"
    uid_named.write_bytes((folder / "IM0000").read_bytes())  # DICOM files are often named by a UID
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(folder / "mask.nii.gz"))
    dialog = ImageFileDialog(None, str(folder))
    qtbot.addWidget(dialog)
    dialog.show()
    dicom = {f"IM{i:04d}" for i in range(7)} | {f"scout{i:03d}.dcm" for i in range(3)} | {uid_named.name}
    qtbot.waitUntil(lambda: listed(dialog, folder) == dicom | {"mask.nii.gz"}, timeout=20_000)

    combo = dialog.findChild(QComboBox, "fileTypeCombo")
    assert [combo.itemText(i) for i in range(combo.count())] == ["Images and DICOM files", "All files"]
    qtbot.keyClick(combo, Qt.Key_Down)  # the person picks "All files"
    assert dialog.selectedNameFilter() == "All files (*)"
    qtbot.waitUntil(lambda: "notes.txt" in listed(dialog, folder), timeout=20_000)
    qtbot.keyClick(combo, Qt.Key_Up)
    qtbot.waitUntil(lambda: "notes.txt" not in listed(dialog, folder), timeout=20_000)


def test_picking_one_file_opens_the_whole_series(gui, qtbot, study) -> None:
    viewer, widget = gui
    folder, image = study
    widget.qsettings.setValue(SETTINGS_OPEN_FOLDER, str(folder))

    def pick(dialog: ImageFileDialog) -> None:  # the person types one file's name and presses Enter
        line = dialog.findChild(QLineEdit, "fileNameEdit")
        qtbot.keyClicks(line, "IM0003")
        qtbot.keyClick(line, Qt.Key_Return)

    seen = answer_open_dialog(pick)
    with qtbot.waitSignal(widget.image_opened, timeout=60_000) as blocker:
        widget.image_panel.open_button.click()
    assert seen, "the open dialog was shown"
    [layer] = blocker.args[0]
    assert layer.name == "series" and [candidate.name for candidate in viewer.layers] == ["series"]
    assert_is_the_series(layer, image)  # the 7-slice series, not the 3-slice one beside it
    assert widget.image_panel.channel_combos[0].currentData() == "series"
    assert widget.qsettings.value(SETTINGS_OPEN_FOLDER) == str(folder), "the next dialog starts here again"


def test_open_folder_opens_the_largest_series_in_it(gui, qtbot, study) -> None:
    _, widget = gui
    folder, image = study
    widget.qsettings.setValue(SETTINGS_OPEN_FOLDER, str(folder))
    started_in: list[str] = []

    def open_folder(dialog: ImageFileDialog) -> None:  # the person clicks Open folder in the series folder
        started_in.append(dialog.directory().absolutePath())
        dialog.folder_button.click()

    answer_open_dialog(open_folder)
    with qtbot.waitSignal(widget.image_opened, timeout=60_000) as blocker:
        widget.image_panel.open_button.click()
    assert started_in == [str(folder)], "the dialog starts in the last folder"
    [layer] = blocker.args[0]
    assert layer.name == "series"
    assert_is_the_series(layer, image)
    assert widget.files.suggested_save_path([layer], None) == folder.parent / "series_segmentation.nii.gz", \
        "a series is saved as NIfTI next to its folder"


def test_a_file_that_is_no_image_gives_one_clear_sentence(gui, qtbot, dialogs, study) -> None:
    viewer, widget = gui
    folder, _ = study
    with qtbot.waitSignal(widget.image_opened, timeout=60_000) as blocker:
        widget.open_image(folder / "notes.txt")
    assert blocker.args == [[]] and len(viewer.layers) == 0
    [(title, text)] = dialogs["critical"]
    assert "could not be opened" in title and "Traceback" not in text
    assert "notes.txt" in text and "not an image Tilewise reads" in text and "DICOM series folder" in text


def test_napari_file_open_of_a_dcm_file_reads_its_series(make_napari_viewer, study) -> None:
    folder, image = study
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(folder / "scout001.dcm"), plugin="tilewise")
    assert layer.name == "series"
    assert_is_the_series(layer, image)  # the folder's largest series, as `tilewise predict -i FOLDER` reads it

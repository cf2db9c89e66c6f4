"""Every opened image comes into view, wherever it lies in the scanner's space: centred, zoomed to fit, on its middle
slice (a DICOM series on its first image); Home and the View buttons reset the view to the selected image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from gui_fixtures import open_image, without_models
from test_gui_dicom_open import write_series
from tilewise.gui.contributions import META_FIRST_SLICE, META_MODALITY
from tilewise.gui.geometry import slice_on_screen

RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(autouse=True)
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model: these tests are about the view only."""
    without_models(monkeypatch)


def write_image(path: Path, origin: tuple[float, float, float], direction: tuple[float, ...] = RAS) -> Path:
    """A 24 x 30 x 20 volume (x, y, z) whose slices along z hold their index (so the slice shown can be told)."""
    array = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None], (20, 30, 24)).copy()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def assert_in_view(viewer, layer) -> None:
    """``layer`` is centred and fits the canvas (filling most of it along one axis)."""
    displayed = list(viewer.dims.displayed)
    offset = viewer.dims.ndim - layer.ndim
    extent = np.asarray(layer.extent.world)[:, [axis - offset for axis in displayed]]
    camera = viewer.scene.camera
    np.testing.assert_allclose(camera.center[-2:], extent.mean(axis=0), atol=1e-3)
    on_screen = (extent[1] - extent[0]) * camera.zoom  # canvas pixels
    canvas = np.asarray(viewer.canvas.size, dtype=float)  # (height, width)
    assert np.all(on_screen <= canvas + 1) and np.max(on_screen / canvas) > 0.8, (on_screen, canvas)


def shown_slice(viewer, layer) -> int:
    axis, index = slice_on_screen(viewer, layer)
    assert axis == 0, "the axial view steps through the file's slices"
    return index


def test_images_a_metre_apart_each_come_into_view(gui, qtbot, tmp_path: Path) -> None:
    viewer, widget = gui
    near = write_image(tmp_path / "near.nii.gz", (10.0, -20.0, 30.0))
    far = write_image(tmp_path / "far.nii.gz", (1010.0, 980.0, 1030.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    [first] = open_image(qtbot, widget, near)
    assert_in_view(viewer, first)
    assert shown_slice(viewer, first) == 10, "the middle slice"
    [second] = open_image(qtbot, widget, far)
    qtbot.wait(10)  # nothing left for later: the view is laid out already
    assert_in_view(viewer, second)
    assert shown_slice(viewer, second) == 10
    assert np.asarray(second.extent.world)[0].min() - np.asarray(first.extent.world)[1].max() > 900

    # Home resets to the selected image, keeping its slice; so do the View buttons
    viewer.layers.selection.active = first
    viewer.scene.camera.center = (0.0, 5000.0, -5000.0)
    viewer.scene.camera.zoom = 0.001
    viewer.window._qt_viewer.viewerButtons.resetViewButton.click()
    assert_in_view(viewer, first)
    assert shown_slice(viewer, first) == 10, "the slider moved into the image it was outside of"
    viewer.dims.set_point(0, float(first.data_to_world((3, 0, 0))[0]))
    viewer.window._qt_viewer.viewerButtons.resetViewButton.click()
    assert shown_slice(viewer, first) == 3, "Home keeps the slice on screen when it is inside the image"

    buttons = widget.image_panel.view_buttons.buttons
    buttons["coronal"].click()
    assert_in_view(viewer, first)
    axis, index = slice_on_screen(viewer, first)
    assert axis == 1 and 0 <= index < first.data.shape[1]
    viewer.layers.selection.active = second
    viewer.scene.camera.zoom = 50.0
    buttons["coronal"].click()  # the plane on screen: still a reset to the selected image
    assert_in_view(viewer, second)
    buttons["axial"].click()
    assert_in_view(viewer, second)
    assert shown_slice(viewer, second) == 10


def test_a_dicom_series_opens_on_its_first_image(gui, qtbot, tmp_path: Path) -> None:
    viewer, widget = gui
    array = (np.arange(9, dtype=np.int16)[:, None, None] * 100 - 800) * np.ones((9, 16, 12), dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 3.0))
    image.SetOrigin((-500.0, 700.0, -1200.0))
    image.SetDirection(RAS)
    files = write_series(tmp_path / "series", image, "1.2.826.0.1.3680043.2.1125.78.1", lambda i: f"IM{i:04d}.dcm")
    for index, path in enumerate(files):  # numbered head first: image 1 is the top slice
        header = pydicom.dcmread(path)
        header.InstanceNumber = len(files) - index
        header.save_as(path)
    [layer] = open_image(qtbot, widget, files[0])
    assert layer.metadata[META_MODALITY] == "CT" and layer.metadata[META_FIRST_SLICE] == 8
    assert_in_view(viewer, layer)
    index = shown_slice(viewer, layer)
    assert float(np.asarray(layer.data)[index].mean()) == 0.0, "the slice of instance number 1 (written last)"

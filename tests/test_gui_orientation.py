"""Views in radiological convention whatever the file's direction matrix, with the right letters at the canvas edges.

Each volume is written by the test with its own direction matrix and holds a bright block in the patient's
anterior-left-superior octant (worked out from the file's geometry, voxel by voxel). Where that block shows on the
rendered canvas is checked against the convention; so are the screen directions of the patient axes, computed here
from the layer transform, the dims order and the camera orientation, and the letters drawn at the edges.
"""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

import SimpleITK as sitk
from qtpy.QtWidgets import QApplication
from tilewise.gui.contributions import read_layers, sample_path
from tilewise.gui.geometry import geometry_from_layer, slice_on_screen
from tilewise.gui.layers import LivePreview
from tilewise.gui.orientation import VIEWS, OrientationButtons, install_orientation


def _rotation_x(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])


# SimpleITK direction matrices (LPS; column i is the patient direction of image axis i)
DIRECTIONS = {
    "lps_identity": np.eye(3),
    "ras_flipped": np.diag([-1.0, -1.0, 1.0]),
    # DICOM sagittal: rows run posterior, columns inferior, slices towards the patient's right
    "sagittal_swapped": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    # DICOM coronal: rows run left, columns inferior, slices posterior
    "coronal_swapped": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    # an RAS volume tilted 20 degrees about the left-right axis (an AC-PC aligned acquisition)
    "oblique_20": _rotation_x(20.0) @ np.diag([-1.0, -1.0, 1.0]),
}
# patient directions (LPS x, y, z)
ANTERIOR, SUPERIOR, LEFT = np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
LETTER_VECTORS = {"L": LEFT, "R": -LEFT, "A": ANTERIOR, "P": -ANTERIOR, "S": SUPERIOR, "I": -SUPERIOR}
# the radiological convention: where anterior, superior and left point on screen (None: through the screen)
CONVENTION = {
    "axial": {"anterior": "up", "left": "right", "superior": None},
    "coronal": {"superior": "up", "left": "right", "anterior": None},
    "sagittal": {"superior": "up", "anterior": "left", "left": None},
}
SCREEN_OF_EDGE = {"top": "up", "bottom": "down", "left": "left", "right": "right"}
# where the anterior-left-superior block shows, as (rows, columns) signs from the slice's centre
BLOCK_QUADRANT = {"axial": (-1, 1), "coronal": (-1, 1), "sagittal": (-1, -1)}


def write_case(path: Path, direction: np.ndarray) -> np.ndarray:
    """A volume of 0.3 with 1.0 in the patient's anterior-left-superior octant; returns that octant's mask
    (numpy z, y, x order)."""
    size, spacing, origin = (30, 26, 22), (1.0, 1.2, 1.5), (-12.0, 30.0, 7.0)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    physical = origin + (index * spacing) @ direction.T
    offset = physical - physical.mean(axis=0)
    block = ((offset[:, 1] < 0) & (offset[:, 0] > 0) & (offset[:, 2] > 0)).reshape(size).transpose(2, 1, 0)
    image = sitk.GetImageFromArray(np.where(block, 1.0, 0.3).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    sitk.WriteImage(image, str(path))
    return block


def open_case(viewer, path: Path):
    """Open ``path`` the way the plugin's reader does; contrast 0-1 so background and block render apart."""
    [(data, kwargs, _)] = read_layers(path)
    image = viewer.add_image(data, **kwargs)
    image.contrast_limits = (0.0, 1.0)
    return image


def screen_direction(viewer, layer, source: Path, patient_vector: np.ndarray) -> str | None:
    """Where ``patient_vector`` (LPS) points on the canvas: "up", "down", "left", "right", or None when it runs
    mostly through the screen. From the geometry of the file ``source``, the layer's data-to-world transform, the
    dims order and the camera's 2D orientation."""
    reference = sitk.ReadImage(str(source))
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    data_xyz = np.linalg.solve(direction @ np.diag(reference.GetSpacing()), patient_vector)
    world = layer.affine.affine_matrix[:3, :3] @ np.diag(layer.scale) @ data_xyz[::-1]
    world /= np.linalg.norm(world)
    vertical, horizontal = viewer.dims.order[-2:]
    orientation = [str(o) for o in viewer.scene.camera.orientation2d]
    down = world[vertical] * (1 if orientation[0] == "down" else -1)
    right = world[horizontal] * (1 if orientation[1] == "right" else -1)
    if max(abs(down), abs(right)) < 0.7:
        return None
    if abs(down) > abs(right):
        return "down" if down > 0 else "up"
    return "right" if right > 0 else "left"


def show_block_slice(viewer, layer, block: np.ndarray) -> None:
    """Step the slider to the slice through the middle of the block."""
    through = viewer.dims.order[-3]
    world = layer.data_to_world(np.argwhere(block).mean(axis=0))
    viewer.dims.set_point(through, world[through])


def canvas(viewer) -> np.ndarray:
    QApplication.processEvents()
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)


def centroid(mask: np.ndarray) -> np.ndarray:
    assert mask.sum() > 20, "the thing looked for is on the canvas"
    return np.argwhere(mask).mean(axis=0)


def grey(pixels: np.ndarray, low: int) -> np.ndarray:
    """Grey pixels brighter than ``low`` (the letters are yellow: left out)."""
    return (pixels.min(axis=-1) > low) & (pixels.max(axis=-1) - pixels.min(axis=-1) < 30)


@pytest.mark.parametrize("case", sorted(DIRECTIONS))
def test_every_view_is_radiological_whatever_the_direction(make_napari_viewer, tmp_path: Path, case: str) -> None:
    viewer = make_napari_viewer(show=True)
    orientation = install_orientation(viewer)
    assert install_orientation(viewer) is orientation, "installed once per viewer"
    path = tmp_path / f"{case}.nii.gz"
    block = write_case(path, DIRECTIONS[case])
    image = open_case(viewer, path)
    preview = LivePreview.for_image(viewer, image, geometry_from_layer(image), {1: "block"}, [path], None, 1.0)
    labels = preview.finish(block.astype(np.uint8))
    assert orientation.layer is labels, "follows the active layer: the labels made from the image"
    viewer.layers.selection.active = image
    for view in VIEWS:
        assert orientation.show(view) and orientation.view == view
        for name, vector in (("anterior", ANTERIOR), ("superior", SUPERIOR), ("left", LEFT)):
            for layer in (image, labels):
                where = screen_direction(viewer, layer, path, vector)
                assert where == CONVENTION[view][name], (view, name, layer.name)
        letters = orientation.letters
        assert sorted(letters) == ["bottom", "left", "right", "top"]
        for edge, letter in letters.items():
            where = screen_direction(viewer, image, path, LETTER_VECTORS[letter])
            assert where == SCREEN_OF_EDGE[edge], (view, letters)

        show_block_slice(viewer, image, block)
        labels.visible = False
        pixels = canvas(viewer)
        image_block = centroid(grey(pixels, 200))
        rows, columns = np.sign(image_block - centroid(grey(pixels, 40)))
        assert (rows, columns) == BLOCK_QUADRANT[view], f"{view}: the block shows in the wrong quadrant"
        image.visible = False
        empty = canvas(viewer)
        labels.visible = True
        labels_block = centroid(np.abs(canvas(viewer) - empty).max(axis=-1) > 40)
        image.visible = True
        np.testing.assert_allclose(labels_block, image_block, atol=3, err_msg="labels show the same anatomy")


def test_sample_letters_and_slice_order(make_napari_viewer) -> None:
    path = sample_path()
    if path is None:
        pytest.skip("the sample is not installed")
    viewer = make_napari_viewer(show=True)
    orientation = install_orientation(viewer)
    [(data, kwargs, _)] = read_layers(path)
    image = viewer.add_image(data, **kwargs)
    assert np.allclose(np.array(kwargs["metadata"]["tilewise_geometry"].direction).reshape(3, 3),
                       np.diag([-1, -1, 1])), "the sample is stored RAS"
    assert orientation.view == "axial", "opens on its native (axial) plane"
    expected = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}
    through_data_axis = {"axial": 0, "coronal": 1, "sagittal": 2}
    for view, (top, bottom, left, right) in expected.items():
        orientation.show(view)
        assert orientation.letters == {"top": top, "bottom": bottom, "left": left, "right": right}
        assert slice_on_screen(viewer, image)[0] == through_data_axis[view], "tile order follows the slice"
        assert viewer.dims.axis_labels[viewer.dims.order[0]] == view, "the slider is named after its plane"


def test_roll_transpose_buttons_and_3d(make_napari_viewer, tmp_path: Path, qtbot) -> None:
    viewer = make_napari_viewer(show=True)
    orientation = install_orientation(viewer)
    buttons = OrientationButtons(orientation)
    qtbot.addWidget(buttons)
    assert orientation.letters == {} and not any(b.isEnabled() for b in buttons.buttons.values()), "no image yet"
    path = tmp_path / "sagittal.nrrd"
    write_case(path, DIRECTIONS["sagittal_swapped"])
    image = open_case(viewer, path)
    assert orientation.view == "sagittal", "a sagittal acquisition opens on its native plane"
    assert buttons.buttons["sagittal"].isChecked() and not buttons.buttons["axial"].isChecked()
    assert orientation.letters == {"top": "S", "bottom": "I", "left": "A", "right": "P"}

    seen = []
    for _ in range(3):  # napari's roll button steps through the three views, each radiological
        viewer.dims.roll()
        seen.append(orientation.view)
        assert screen_direction(viewer, image, path, SUPERIOR if seen[-1] != "axial" else ANTERIOR) == "up"
    assert seen == ["axial", "coronal", "sagittal"]

    buttons.buttons["coronal"].click()
    assert orientation.view == "coronal" and buttons.buttons["coronal"].isChecked()
    assert slice_on_screen(viewer, image)[0] == 2, "the data axis that runs anterior-posterior is the slider's"
    viewer.dims.transpose()  # would mirror the patient: the convention holds
    assert orientation.letters == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert screen_direction(viewer, image, path, LEFT) == "right"

    viewer.dims.ndisplay = 3
    assert orientation.letters == {} and orientation.view is None
    assert not any(b.isChecked() for b in buttons.buttons.values())
    buttons.buttons["axial"].click()
    assert viewer.dims.ndisplay == 2 and orientation.view == "axial"
    assert orientation.letters == {"top": "A", "bottom": "P", "left": "R", "right": "L"}

    orientation.close()
    assert orientation.letters == {}
    assert not any(name.startswith("tilewise_orientation_") for name in viewer.canvas.overlays)


def test_another_image_keeps_the_view_in_its_own_axes(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer(show=True)
    orientation = install_orientation(viewer)
    ras_path, coronal_path = tmp_path / "ras.nii.gz", tmp_path / "coronal.nii.gz"
    write_case(ras_path, DIRECTIONS["ras_flipped"])
    write_case(coronal_path, DIRECTIONS["coronal_swapped"])
    ras = open_case(viewer, ras_path)
    orientation.show("sagittal")
    coronal = open_case(viewer, coronal_path)
    assert orientation.layer is coronal and orientation.view == "sagittal"
    assert screen_direction(viewer, coronal, coronal_path, ANTERIOR) == "left"
    assert screen_direction(viewer, coronal, coronal_path, LEFT) is None
    viewer.layers.selection.active = ras
    assert orientation.layer is ras and orientation.view == "sagittal"
    assert screen_direction(viewer, ras, ras_path, ANTERIOR) == "left"
    assert screen_direction(viewer, ras, ras_path, SUPERIOR) == "up"
    plain = viewer.add_image(np.zeros((4, 5, 6)), name="not anatomical")  # no geometry: its axes mean nothing
    assert viewer.layers.selection.active is plain and orientation.layer is ras, "the last image stays followed"
    viewer.layers.remove(ras)
    assert orientation.layer is coronal and orientation.view == "sagittal"
    viewer.layers.remove(coronal)
    assert orientation.layer is None and orientation.letters == {}


def test_letters_go_with_the_handle(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer(show=True)
    orientation = install_orientation(viewer)
    write_case(tmp_path / "ras.nii.gz", DIRECTIONS["ras_flipped"])
    open_case(viewer, tmp_path / "ras.nii.gz")
    assert orientation.letters == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    del orientation  # the dock widget that held it was closed
    gc.collect()
    assert not any(name.startswith("tilewise_orientation_") for name in viewer.canvas.overlays)
    viewer.dims.roll()  # nothing reacts any more
    assert install_orientation(viewer).letters, "a new handle can be installed"

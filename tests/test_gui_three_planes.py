"""Axial, coronal and sagittal side by side: the standalone viewer shows them from the start, napari (the plugin) on
one click; each view is radiological with its letters; one crosshair point links them (a click, a slider, code);
every layer and every change of its data shows in all three; opened images come into view in all three; and the
extra canvases go without a trace."""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from gui_fixtures import open_image, without_models
from napari.qt import QtViewer
from qtpy.QtCore import QPoint, QSettings, Qt
from qtpy.QtWidgets import QApplication, QPushButton
from test_gui_framing import assert_in_view, write_image
from test_gui_orientation import DIRECTIONS, LETTER_VECTORS, SCREEN_OF_EDGE, screen_direction, write_case
from tilewise.gui import app
from tilewise.gui.geometry import geometry_from_layer
from tilewise.gui.layers import LivePreview
from tilewise.gui.orientation import VIEWS

# where the patient's axes point on screen in each plane (the radiological convention)
CONVENTION = {"axial": {"A": "up", "L": "right"}, "coronal": {"S": "up", "L": "right"},
              "sagittal": {"S": "up", "A": "left"}}


@pytest.fixture(autouse=True)
def no_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No model and no sample: these tests are about the views; the settings stay in ``tmp_path``."""
    without_models(monkeypatch)
    monkeypatch.setattr("tilewise.gui.contributions.sample_path", lambda: None)
    monkeypatch.setattr("tilewise.gui.widget.default_settings",
                        lambda: QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))


@pytest.fixture
def standalone(make_napari_viewer):
    """``tilewise`` as the app builds it (three planes), in a shown window; (viewer, widget), shut down after."""
    viewer, widget = app.build_viewer(app.parse_args([]), viewer=make_napari_viewer(show=True), show=False)
    yield viewer, widget
    widget.shutdown()


def settle() -> None:
    for _ in range(3):
        QApplication.processEvents()


def extra_canvases(widget) -> list[QtViewer]:
    return [plane.mirror.qt_viewer for plane in widget.planes.planes]


def canvas_pixel(model, point) -> tuple[float, float]:
    """(x, y) canvas pixel of world ``point`` in the 2D view of ``model`` (napari's or an extra canvas's)."""
    vertical, horizontal = model.dims.order[-2:]
    camera = model.scene.camera
    down, right = (str(o) for o in camera.orientation2d)
    height, width = model.canvas.size
    y = height / 2 + (point[vertical] - camera.center[-2]) * camera.zoom * (1 if down == "down" else -1)
    x = width / 2 + (point[horizontal] - camera.center[-1]) * camera.zoom * (1 if right == "right" else -1)
    return x, y


def crosshair_pixels(pixels: np.ndarray) -> np.ndarray:
    """Where the light-blue crosshair is drawn (over black, grey or white)."""
    red, green, blue = (pixels[..., i].astype(int) for i in range(3))
    return (blue > 190) & (green > 150) & (red < 140)


def test_standalone_shows_three_radiological_planes(standalone, qtbot, tmp_path: Path) -> None:
    viewer, widget = standalone
    [button] = [b for b in widget.image_panel.view_buttons.findChildren(QPushButton) if b.text() == "Three planes"]
    assert widget.planes.shown and button.isChecked()
    path = tmp_path / "sagittal.nrrd"  # a sagittal acquisition: rows posterior, columns inferior, slices rightwards
    write_case(path, DIRECTIONS["sagittal_swapped"])
    [image] = open_image(qtbot, widget, path)
    image.contrast_limits = (0.0, 1.0)  # the background (0.3) grey, not black
    widget.image_panel.view_buttons.buttons["axial"].click()  # it opens on its own (sagittal) plane
    views = widget.planes.views()
    assert sorted(views) == sorted(VIEWS) and views["axial"] is viewer
    for view, model in views.items():
        layer = model.layers[image.name]
        assert layer.data is image.data, "the extra canvases show the same array, not a copy"
        for letter, where in CONVENTION[view].items():
            assert screen_direction(model, layer, path, LETTER_VECTORS[letter]) == where, (view, letter)
        letters = widget.planes.orientation.letters if model is viewer else \
            next(p.orientation.letters for p in widget.planes.planes if p.model is model)
        assert sorted(letters) == ["bottom", "left", "right", "top"]
        for edge, letter in letters.items():
            assert screen_direction(model, layer, path, LETTER_VECTORS[letter]) == SCREEN_OF_EDGE[edge], (view, edge)
    settle()
    for canvas in extra_canvases(widget):
        pixels = canvas.screenshot(flash=False)[..., :3]
        assert (pixels.max(axis=-1) > 60).mean() > 0.1, "the extra canvas draws the image"

    widget.image_panel.view_buttons.buttons["coronal"].click()  # napari's canvas shows another plane
    views = widget.planes.views()
    assert views["coronal"] is viewer and sorted(views) == sorted(VIEWS), "the extra canvases show the other two"


def test_the_plugin_keeps_one_canvas_until_three_planes_is_clicked(make_napari_viewer, qtbot, ct_case: Path) -> None:
    viewer = make_napari_viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("tilewise", "Segmentation")  # napari hands a proxy
    buttons = [b for b in widget.image_panel.view_buttons.findChildren(QPushButton) if b.text() == "Three planes"]
    assert len(buttons) == 1 and not buttons[0].isChecked()
    button = buttons[0]
    assert not widget.planes.shown and widget.planes.views() == {} and len(QtViewer._instances) == 1
    open_image(qtbot, widget, ct_case)
    button.click()
    assert widget.planes.shown and sorted(widget.planes.views()) == sorted(VIEWS)
    assert len(QtViewer._instances) == 3
    models = [weakref.ref(plane.model) for plane in widget.planes.planes]
    canvases = [weakref.ref(canvas) for canvas in extra_canvases(widget)]
    button.click()
    assert not widget.planes.shown and widget.planes.views() == {}
    settle()
    gc.collect()
    assert all(ref() is None for ref in models + canvases), "no extra viewer is left alive"
    button.click()
    assert widget.planes.shown, "and they come back"
    widget.shutdown()
    assert not button.isChecked()


def test_a_click_or_a_slider_moves_the_crosshair_in_every_plane(standalone, qtbot, tmp_path: Path) -> None:
    viewer, widget = standalone
    [image] = open_image(qtbot, widget, write_image(tmp_path / "near.nii.gz", (10.0, -20.0, 30.0)))
    settle()
    views, crosshairs = widget.planes.views(), widget.planes.crosshairs()
    before = tuple(viewer.dims.point)
    low, high = np.asarray(image.extent.world)
    target = before[0], low[1] + 0.3 * (high[1] - low[1]), low[2] + 0.7 * (high[2] - low[2])  # in the axial plane
    x, y = canvas_pixel(viewer, target)
    qtbot.mouseClick(viewer.window._qt_viewer.canvas.native, Qt.LeftButton, pos=QPoint(round(x), round(y)))
    pixel = 1 / viewer.scene.camera.zoom  # mm per canvas pixel
    for axis in (1, 2):  # the other planes' sliders may take it to the voxel's centre
        assert abs(viewer.dims.point[axis] - target[axis]) <= viewer.dims.range[axis].step / 2 + pixel, axis
    assert viewer.dims.point[0] == before[0], "the axial slice stays"
    for view, model in views.items():
        assert tuple(model.dims.point) == tuple(viewer.dims.point), f"{view} moved to the point"
        vertical, horizontal, y_mm, x_mm = crosshairs[view].centre
        assert (y_mm, x_mm) == (model.dims.point[vertical], model.dims.point[horizontal])
    settle()
    coronal = views["coronal"]
    qt_coronal = next(p.mirror.qt_viewer for p in widget.planes.planes if p.model is coronal)
    drawn = crosshair_pixels(qt_coronal.screenshot(flash=False)[..., :3])
    column = int(np.argmax(drawn.sum(axis=0)))
    assert abs(column - canvas_pixel(coronal, coronal.dims.point)[0]) <= 2, "the coronal crosshair is drawn there"

    viewer.dims.set_point(0, float(image.data_to_world((3, 0, 0))[0]))  # code (or the axial slider) moves the slice
    for view, model in views.items():
        assert model.dims.point[0] == viewer.dims.point[0]
        if view != "axial":
            assert crosshairs[view].centre[2] == viewer.dims.point[0], f"the {view} crosshair's line moved"
    sagittal = views["sagittal"]
    sagittal.dims.set_point(2, float(target[2]) - 5.0)  # the sagittal slider (napari may snap it to a slice)
    assert abs(viewer.dims.point[2] - (float(target[2]) - 5.0)) <= sagittal.dims.range[2].step
    assert views["coronal"].dims.point[2] == viewer.dims.point[2] == sagittal.dims.point[2]


def test_every_layer_and_its_changes_show_in_every_plane(standalone, qtbot, tmp_path: Path) -> None:
    viewer, widget = standalone
    path = write_image(tmp_path / "near.nii.gz", (10.0, -20.0, 30.0))
    [image] = open_image(qtbot, widget, path)
    preview = LivePreview.for_image(viewer, image, geometry_from_layer(image), {1: "liver"}, [path], None, 1.0)
    labels = preview.layer
    settle()
    extras = [plane.model for plane in widget.planes.planes]
    for model in extras:
        assert [layer.name for layer in model.layers] == [image.name, labels.name]
    empty = [canvas.screenshot(flash=False)[..., :3].astype(int) for canvas in extra_canvases(widget)]
    centre = tuple(int(i) for i in np.round(image.world_to_data(viewer.dims.point)))
    box = tuple(slice(c - 3, c + 4) for c in centre)
    preview.add(box, np.ones((7, 7, 7), dtype=np.uint8))  # a run's tile, written in place as the engine's are
    preview.flush()
    qtbot.waitUntil(lambda: all(int(m.layers[labels.name]._slice.image.raw.max()) == 1 for m in extras), timeout=2000)
    settle()
    for canvas, before in zip(extra_canvases(widget), empty):
        changed = np.abs(canvas.screenshot(flash=False)[..., :3].astype(int) - before).max(axis=-1) > 40
        assert changed.sum() > 20, "the tile shows in the other planes as it arrives"

    labels.selected_label = 1
    labels.paint(centre, 2, refresh=True)  # the brush (napari's own painting)
    qtbot.waitUntil(lambda: all(m.layers[labels.name]._slice.image.raw.max() == 2 for m in extras), timeout=2000)
    labels.opacity, labels.selected_label = 0.3, 2
    image.contrast_limits = (2.0, 9.0)
    for model in extras:
        mirror = model.layers[labels.name]
        assert mirror.opacity == 0.3 and mirror.selected_label == 2 and not mirror.editable
        assert model.layers[image.name].contrast_limits == [2.0, 9.0]

    final = np.zeros(image.data.shape, dtype=np.uint8)
    final[box] = 3
    result = preview.finish(final)  # the final labels replace the preview's array
    uncertainty = viewer.add_image(np.zeros(image.data.shape, dtype=np.float32), name="Uncertainty", colormap="hot",
                                   blending="additive", scale=image.scale, translate=image.translate,
                                   affine=image.affine.affine_matrix)
    viewer.layers.move(viewer.layers.index(image), len(viewer.layers))
    for model in extras:
        assert [layer.name for layer in model.layers] == [result.name, uncertainty.name, image.name]
        assert model.layers[result.name].data is final
        assert model.layers["Uncertainty"].colormap.name == "hot" and model.layers["Uncertainty"].blending == "additive"
    viewer.layers.remove(uncertainty)
    assert all("Uncertainty" not in model.layers for model in extras)


def test_images_a_metre_apart_come_into_view_in_every_plane(standalone, qtbot, tmp_path: Path) -> None:
    viewer, widget = standalone
    [near] = open_image(qtbot, widget, write_image(tmp_path / "near.nii.gz", (10.0, -20.0, 30.0)))
    [far] = open_image(qtbot, widget, write_image(tmp_path / "far.nii.gz", (1010.0, 980.0, 1030.0)))
    settle()
    for model in widget.planes.views().values():
        assert_in_view(model, model.layers[far.name])
    viewer.layers.selection.active = near
    viewer.window._qt_viewer.viewerButtons.resetViewButton.click()  # Home: every plane on the selected image
    settle()
    for model in widget.planes.views().values():
        assert_in_view(model, model.layers[near.name])


def test_closing_the_window_or_the_panel_leaves_no_extra_viewer(make_napari_viewer, qtbot, ct_case: Path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer, widget = app.build_viewer(app.parse_args([str(ct_case)]), viewer=viewer, show=False)
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=60_000)
    refs = [weakref.ref(plane.model) for plane in widget.planes.planes]
    refs += [weakref.ref(canvas) for canvas in extra_canvases(widget)]
    dock = viewer.window._wrapped_dock_widgets["Tilewise"]
    dock.title.close_button.click()  # the panel's x: back to napari's one canvas
    assert not widget.planes.shown
    settle()  # a framing the event loop had queued lets go of its canvas
    gc.collect()
    assert all(ref() is None for ref in refs)

    viewer.window.add_dock_widget(widget, name="Tilewise again", area="right")
    widget.planes.set_shown(True)
    refs = [weakref.ref(plane.model) for plane in widget.planes.planes]
    viewer.close()  # the window, with the planes on screen
    assert not widget.planes.shown
    settle()
    gc.collect()
    assert all(ref() is None for ref in refs)

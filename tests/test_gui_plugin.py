"""The napari plugin: a valid npe2 manifest, and napari finding Tilewise's reader, writer, widget and sample."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import model_factory
import SimpleITK as sitk
from npe2 import PluginManager, PluginManifest
from tilewise.engine import Geometry, InputError
from tilewise.gui import contributions
from tilewise.gui.geometry import (
    geometry_from_layer,
    layer_transform,
    through_plane_axis,
)

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
PERMUTED = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@pytest.fixture
def case(tmp_path: Path) -> Path:
    return model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", direction=FLIPPED, origin=(4.0, -8.0, 2.5))


def test_npe2_validate_passes() -> None:
    PluginManifest.from_distribution("tilewise").validate_imports()
    # npe2 prints a check mark: UTF-8 whatever this process's locale is (after Qt tests it may be ASCII)
    completed = subprocess.run([sys.executable, "-c", "from npe2.cli import main; main()", "validate", "tilewise"],
                               capture_output=True, text=True, encoding="utf-8", timeout=120, check=False,
                               env={**os.environ, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "valid" in completed.stdout


def test_napari_discovers_reader_writer_widget_and_sample(case: Path) -> None:
    manager = PluginManager.instance()
    manager.discover()
    assert "tilewise" in {manifest.name for manifest in manager.iter_manifests()}
    assert any(reader.command == "tilewise.get_reader" for reader in manager.iter_compatible_readers([str(case)]))
    assert any(writer.command == "tilewise.write_labels" for writer in manager.iter_compatible_writers(["labels"]))
    assert any(widget.command == "tilewise.make_widget" for widget in manager.iter_widgets())
    assert any(sample.command == "tilewise.sample_volume"
               for plugin, samples in manager.iter_sample_data() if plugin == "tilewise" for sample in samples)


def test_napari_offers_the_reader_for_dcm_files_and_folders(tmp_path: Path) -> None:
    manager = PluginManager.instance()
    manager.discover()
    for path in (tmp_path / "IM0001.dcm", tmp_path):
        assert "tilewise.get_reader" in {reader.command for reader in manager.iter_compatible_readers([str(path)])}
    assert contributions.get_reader(str(tmp_path / "IM0001.dcm")) is contributions.read_layers


def test_reader_places_voxels_where_simpleitk_does(make_napari_viewer, case: Path) -> None:
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(case), plugin="tilewise")
    reference = sitk.ReadImage(str(case))
    np.testing.assert_array_equal(np.asarray(layer.data), sitk.GetArrayFromImage(reference).astype(np.float32))
    for index_zyx in ((0, 0, 0), (5, 7, 9), (39, 47, 55)):
        physical = reference.TransformIndexToPhysicalPoint([int(i) for i in index_zyx[::-1]])
        np.testing.assert_allclose(layer.data_to_world(index_zyx), physical[::-1], atol=1e-6)
    low, high = layer.contrast_limits
    assert -1024 <= low < high <= 1000, "contrast ignores the extreme voxels"
    assert geometry_from_layer(layer).same_as(Geometry(reference.GetSize(), reference.GetSpacing(),
                                                       reference.GetOrigin(), reference.GetDirection()))


def test_reader_declines_other_files(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert contributions.get_reader(str(other)) is None
    assert contributions.get_reader(str(tmp_path)) is None  # a folder without DICOM files


def test_writer_keeps_the_geometry_of_the_image(make_napari_viewer, case: Path, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    [image] = viewer.open(str(case), plugin="tilewise")
    labels = (np.asarray(image.data) > 50).astype(np.uint8)
    viewer.add_labels(labels, name="mask", metadata=dict(image.metadata), scale=image.scale,
                      translate=image.translate, affine=image.affine)
    viewer.layers.selection = {viewer.layers["mask"]}
    written = viewer.layers.save(str(tmp_path / "mask.nrrd"), selected=True, plugin="tilewise")
    assert written == [str(tmp_path / "mask.nrrd")]
    result, reference = sitk.ReadImage(written[0]), sitk.ReadImage(str(case))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), labels)
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(result, getter)(), getattr(reference, getter)(), atol=1e-6)


def test_writer_without_metadata_uses_the_layer_transform(case: Path, tmp_path: Path) -> None:
    reference = sitk.ReadImage(str(case))
    geometry = Geometry(reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
    transform = layer_transform(geometry)
    labels = np.zeros(reference.GetSize()[::-1], np.uint8)
    labels[3:9, 4:20, 5:30] = 2
    [path] = contributions.write_labels(str(tmp_path / "plain"), labels, {"metadata": {}, **transform})
    result = sitk.ReadImage(path)
    assert path.endswith(".nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), labels)
    np.testing.assert_allclose(result.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-6)


def test_volumes_with_swapped_axes_are_shown_in_their_voxel_frame(make_napari_viewer, tmp_path: Path) -> None:
    path = model_factory.make_case(tmp_path / "sagittal_0000.nrrd", "3d", direction=PERMUTED, origin=(1.0, 2.0, 3.0))
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin="tilewise")  # no napari warning about non-orthogonal slicing
    np.testing.assert_allclose(image.affine.affine_matrix, np.eye(4))
    np.testing.assert_allclose(image.data_to_world((0, 0, 0)), (3.0, 2.0, 1.0))
    reference = sitk.ReadImage(str(path))
    assert geometry_from_layer(image).direction == reference.GetDirection(), "saving keeps the true direction"
    assert [through_plane_axis(image, world_axis) for world_axis in range(3)] == [0, 1, 2]


def test_slider_axis_maps_to_the_data_axis_it_moves_through() -> None:
    from napari.layers import Image

    permuted = np.eye(4)
    permuted[:3, :3] = np.array(PERMUTED).reshape(3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # napari warns that it cannot slice this layer exactly
        layer = Image(np.zeros((4, 5, 6)), scale=(2, 1, 0.5), affine=permuted)
    assert [through_plane_axis(layer, world_axis) for world_axis in range(3)] == [2, 0, 1]
    identity = Image(np.zeros((4, 5, 6)), scale=(2, 1, 1))
    assert [through_plane_axis(identity, world_axis) for world_axis in range(3)] == [0, 1, 2]


def test_sample_data(monkeypatch: pytest.MonkeyPatch, case: Path) -> None:
    from tilewise import resources

    monkeypatch.setattr(resources, "sample_path", lambda: Path("/nonexistent/sample.nii.gz"), raising=False)
    with pytest.raises(InputError, match="sample volume is not installed"):
        contributions.sample_volume()
    monkeypatch.setattr(resources, "sample_path", lambda: case, raising=False)
    [(data, kwargs, layer_type)] = contributions.sample_volume()
    assert layer_type == "image" and data.shape == (40, 48, 56) and kwargs["name"] == "ct_0000"


def test_widget_opens_from_the_plugins_menu(make_napari_viewer) -> None:
    from tilewise.gui.widget import TilewiseWidget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("tilewise", "Segmentation")
    assert isinstance(widget, TilewiseWidget)
    widget.shutdown()


def test_reader_opens_a_dicom_series_folder(make_napari_viewer, tmp_path: Path) -> None:
    array = np.random.default_rng(4).integers(-1000, 1500, (6, 20, 24)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.6, 3.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.77.9"
    for index in range(image.GetDepth()):
        slice_image = image[:, :, index]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", uid + ".0"), ("0020|000e", uid),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(index + 1)),
                           ("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, index))))):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{index:03d}.dcm"))
        writer.Execute(slice_image)

    assert contributions.get_reader(str(folder)) is not None
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(folder), plugin="tilewise")
    assert layer.name == "series"
    np.testing.assert_array_equal(np.asarray(layer.data), array.astype(np.float32))
    np.testing.assert_allclose(layer.scale, (3.0, 0.6, 0.8), atol=1e-4)
    np.testing.assert_allclose(layer.data_to_world((0, 0, 0)), (30.0, -20.0, 10.0), atol=1e-4)

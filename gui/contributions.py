"""napari plugin contributions (``napari.yaml``): reader, labels writer and sample data, all through the engine's io.

Also napari's choice of writer: :func:`prefer_tilewise_writer` puts Tilewise's labels writer first for a labels layer
that Tilewise made, so File > Save Selected Layers offers it first.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from tilewise.engine import (
    ENHANCED_VOLUME_CLASSES,
    IMAGE_SUFFIXES,
    Geometry,
    InputError,
    Volume,
    image_suffix,
    is_dicom_folder,
    is_zip,
    read_volume,
    refuse_overwriting_inputs,
    silenced_fd2,
    strip_suffix,
)
from tilewise.engine import write_labels as _write_labels

from .geometry import geometry_from_transform, layer_transform

LayerData = tuple[Any, dict[str, Any], str]
DICOM_SUFFIX = ".dcm"
META_FIRST_SLICE = "tilewise_first_slice"
"""Of a DICOM series: the index along the first data axis of its first image (lowest instance number)."""
META_MODALITY = "tilewise_modality"
"""Of a DICOM series: its Modality ('CT', 'MR', ...); '' for other files."""
META_WINDOW = "tilewise_window"
"""Of a DICOM series that names one: its first window, (width, level), as the scanner would show it."""
WRITER_COMMAND = "tilewise.write_labels"


def _subsample(array: np.ndarray) -> np.ndarray:
    """About two million voxels spread evenly over ``array`` (all of it when it is smaller)."""
    step = max(1, round((array.size / 2_000_000) ** (1 / 3)))
    return array[::step, ::step, ::step] if array.ndim == 3 else array


def display_range(array: np.ndarray) -> tuple[float, float]:
    """Contrast limits that ignore the extreme 0.5 % of voxels (read from a subsample, so it is quick)."""
    low, high = (float(v) for v in np.percentile(_subsample(array), (0.5, 99.5)))
    if high <= low:
        low, high = float(array.min()), float(array.max())
    return (low, high if high > low else low + 1.0)


def intensity_min(array: np.ndarray) -> float:
    """The lowest intensity of ``array`` (of a subsample: CT air and padding are never isolated voxels)."""
    return float(_subsample(array).min()) if array.size else 0.0


def volume_layers(volume: Volume, name: str | None = None) -> list[LayerData]:
    """One image layer per channel of ``volume``, placed in physical space (see :mod:`.geometry`)."""
    source = volume.sources[0] if volume.sources else None
    base = name or (_display_name(source) if source else "image")
    layers: list[LayerData] = []
    for channel in range(volume.num_channels):
        data = volume.array[channel]
        kwargs = {
            "name": base if volume.num_channels == 1 else f"{base} (channel {channel})",
            "colormap": "gray",
            "contrast_limits": display_range(data),
            "metadata": {"tilewise_geometry": volume.geometry, "tilewise_source": str(source or ""),
                         "tilewise_intensity_min": intensity_min(data),
                         "tilewise_dicom_files": [str(path) for path in volume.dicom_files],
                         **dicom_details(volume.dicom_files, data.shape[0] if data.ndim == 3 else 1)},
            **layer_transform(volume.geometry),
        }
        layers.append((data, kwargs, "image"))
    return layers


def dicom_details(files: tuple[Path, ...], slices: int) -> dict[str, Any]:
    """:data:`META_MODALITY` and :data:`META_FIRST_SLICE` of a DICOM series (``files`` in the order of its
    ``slices`` along the first data axis): where a DICOM viewer starts, the image with the lowest instance number.
    Nothing for other files, or headers that cannot be read."""
    if not files:
        return {}
    try:
        tags = ["Modality", "InstanceNumber", "WindowCenter", "WindowWidth"]
        first, last = (pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
                       for path in (files[0], files[-1]))
    except (OSError, ValueError, pydicom.errors.InvalidDicomError):
        return {}
    details: dict[str, Any] = {META_MODALITY: str(first.get("Modality", "") or "").upper()}
    window = _first_window(first)
    if window is not None:
        details[META_WINDOW] = window
    try:
        descending = len(files) == slices > 1 and int(last.InstanceNumber) < int(first.InstanceNumber)
    except (AttributeError, TypeError, ValueError):  # no instance numbers: the series' first file
        descending = False
    details[META_FIRST_SLICE] = slices - 1 if descending else 0
    return details


def _first_window(header: Any) -> tuple[float, float] | None:
    """(width, level) of the first window a DICOM header names (the tags may hold several); None without one."""
    def first(value: Any) -> float:
        return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)

    try:
        width, level = first(header.WindowWidth), first(header.WindowCenter)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return (width, level) if width > 0 else None


def _display_name(path: Path) -> str:
    """A layer's name for its source: a folder's or zip's name, a DICOM file's folder (it stands for its series)."""
    path = Path(path)
    if path.is_dir():
        return path.name
    return strip_suffix(path) if image_suffix(path) or is_zip(path) else path.parent.name


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a DICOM file (whatever its name), judged by what ITK finds in it."""
    if not path.is_file():
        return False
    with silenced_fd2():
        return sitk.ImageFileReader.GetImageIOFromFileName(str(path)) == "GDCMImageIO"


def image_input(path: Path) -> Path:
    """What the engine reads for a chosen ``path``: one file of a DICOM series stands for its folder (the largest
    series there, as ``tilewise predict -i FOLDER`` reads it); a multi-frame enhanced object, a zip of a DICOM
    folder and an image file are read as they are.

    Raises :class:`InputError` for a file that is neither an image Tilewise reads nor a DICOM file or zip.
    """
    if path.is_dir() or image_suffix(path) is not None or not path.exists() or is_zip(path):
        return path  # the engine reads it, or says why not
    if not is_dicom_file(path):
        raise InputError(path, "not an image Tilewise reads: choose a NIfTI, NRRD or MetaImage file, a DICOM "
                               "series folder or zip, or any file of a DICOM series")
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return path if str(header.get("SOPClassUID", "")) in ENHANCED_VOLUME_CLASSES else path.parent


def read_layers(path: str | Path | list[str]) -> list[LayerData]:
    """Read an image file, a DICOM folder or any file of a DICOM series (several paths: one per channel; files of
    one series count once) into napari layer data."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    inputs = list(dict.fromkeys(image_input(p) for p in paths))
    return volume_layers(read_volume(inputs))


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader: NIfTI, NRRD, MetaImage files, DICOM series folders and .dcm files (their series); None for
    anything else."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        return None
    for candidate in paths:
        readable = (image_suffix(candidate) is not None or candidate.name.lower().endswith(DICOM_SUFFIX)
                    or is_zip(candidate) or (candidate.is_dir() and is_dicom_folder(candidate)))
        if not readable:
            return None
    return read_layers


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: a labels layer, written with the geometry of the image it was made from."""
    target = Path(path)
    if image_suffix(target) is None:
        target = target.with_name(target.name + IMAGE_SUFFIXES[0])
    labels = np.asarray(data)
    metadata = attributes.get("metadata") or {}
    refuse_overwriting_inputs([target], [Path(s) for s in metadata.get("tilewise_sources", [])])
    geometry = metadata.get("tilewise_geometry")
    if geometry is None or tuple(geometry.size[::-1]) != labels.shape[-len(geometry.size):]:
        geometry = geometry_from_transform(labels.shape, attributes.get("scale", (1.0,) * 3),
                                           attributes.get("translate", (0.0,) * 3),
                                           attributes.get("affine", np.eye(4)))
    _write_labels(labels, geometry, target)
    return [str(target)]


def made_by_tilewise(layer: Any) -> bool:
    """True for a labels layer that Tilewise made: it carries the geometry of the image it was made from."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and isinstance(layer.metadata.get("tilewise_geometry"), Geometry)


def prefer_tilewise_writer(first: bool, manager: Any = None) -> bool:
    """Make Tilewise's labels writer napari's first choice (``first``), or its last (napari's own and other
    plugins' writers first, for labels Tilewise did not make). False when this npe2 cannot be told.

    npe2 ranks writers of the same kind in the order plugins were registered, which follows the order installed
    packages are found on disk, and has no public setting for it (see :func:`._compat.reorder_writers`).
    """
    from . import _compat

    return _compat.reorder_writers(WRITER_COMMAND, first, manager)


def bundled_data_dir() -> Path | None:
    """The folder of the data installed with Tilewise (sample, demo model): part of the installation, not the
    user's."""
    try:
        from tilewise import resources
    except ImportError:
        return None
    return Path(resources.__file__).resolve().parent


def sample_path() -> Path | None:
    """The bundled sample volume, if this installation has one."""
    try:
        from tilewise import resources
    except ImportError:
        return None
    finder = getattr(resources, "sample_path", None)
    if finder is None:
        return None
    path = Path(finder())
    return path if path.exists() else None


def demo_model_dir() -> Path | None:
    """The bundled demo model folder, if this installation has one."""
    try:
        from tilewise import resources
    except ImportError:
        return None
    finder = getattr(resources, "demo_model_dir", None)
    if finder is None:
        return None
    path = Path(finder())
    return path if path.is_dir() else None


def sample_volume() -> list[LayerData]:
    """npe2 sample data: the sample volume shipped with Tilewise."""
    path = sample_path()
    if path is None:
        raise InputError(None, "the Tilewise sample volume is not installed with this copy of Tilewise")
    return read_layers(path)

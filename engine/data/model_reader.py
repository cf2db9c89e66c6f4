"""The image reader a model was trained with (``image_reader_writer`` in plans.json), for models that do not read
like SimpleITK.

nnU-Net feeds a network the arrays of the reader class its plans name. Tilewise reads every image with SimpleITK
(the viewer shows it, the writers keep its geometry), which gives the same arrays as nnU-Net's ``SimpleITKIO``. A
model planned with another reader (``NibabelIOWithReorient`` reorients to RAS, ``NibabelIO`` transposes nibabel's
axes, ...) was trained on arrays in another voxel order, so it gets its input from that reader, and its labels are
put back into the volume's order through the same reader's ``write_seg`` (exactly what nnU-Net writes), read back
with SimpleITK.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ModelError
from .readers import image_suffix
from .volume import Volume

SIMPLEITK_READER = "SimpleITKIO"


def reader_name(plans: dict[str, Any]) -> str:
    """The reader class the plans name (nnU-Net's default when they name none)."""
    return str(plans.get("image_reader_writer") or SIMPLEITK_READER)


def reads_like_simpleitk(name: str) -> bool:
    """Whether the reader's arrays are the ones SimpleITK gives (then nothing needs converting)."""
    return name == SIMPLEITK_READER


def _reader(name: str) -> Any:
    """nnunetv2's reader class by name; its search is limited to the ``nnunetv2.imageio`` package."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    not_shipped = ModelError("plans.json", f"image_reader_writer '{name}' is not a reader nnunetv2 ships")
    if not name.isidentifier():
        raise not_shipped
    try:
        found = recursive_find_reader_writer_by_name(name)
    except RuntimeError:
        raise not_shipped from None
    if not str(getattr(found, "__module__", "")).startswith("nnunetv2.imageio."):  # a helper those modules import
        raise not_shipped
    return found()


def _files_for(volume: Volume, reader: Any, folder: Path) -> list[str]:
    """The volume's own files when the reader takes them; else the channels written as NIfTI by SimpleITK."""
    endings = tuple(getattr(reader, "supported_file_endings", ()))
    sources = list(volume.sources)
    if len(sources) == volume.num_channels and all(p.is_file() and (image_suffix(p) or "") in endings for p in sources):
        return [str(p) for p in sources]
    files = []
    for channel in range(volume.num_channels):
        image = sitk.GetImageFromArray(volume.array[channel])
        image.SetSpacing(volume.geometry.spacing)
        image.SetOrigin(volume.geometry.origin)
        image.SetDirection(volume.geometry.direction)
        path = folder / f"case_{channel:04d}.nii.gz"
        sitk.WriteImage(image, str(path))
        files.append(str(path))
    return files


def read_as_model(volume: Volume, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The volume's channels as reader ``name`` returns them: (channels, z, y, x) float32 and nnU-Net's properties."""
    reader = _reader(name)
    with tempfile.TemporaryDirectory(prefix="tilewise-reader-") as folder:
        files = _files_for(volume, reader, Path(folder))
        try:
            array, properties = reader.read_images(files)
        except Exception as error:  # noqa: BLE001 - any reader failure is this input's problem, in one line
            raise InputError(files[0], f"{name} cannot read it ({str(error).splitlines()[0][:160]})") from None
    return np.ascontiguousarray(array, dtype=np.float32), properties


def labels_in_volume_order(labels: np.ndarray, properties: dict[str, Any], name: str,
                           volume_shape: tuple[int, ...]) -> np.ndarray:
    """Labels the model's reader order gave, in the volume's (SimpleITK) voxel order: written by the reader's own
    ``write_seg``, as nnU-Net writes its output, then read back with SimpleITK."""
    reader = _reader(name)
    with tempfile.TemporaryDirectory(prefix="tilewise-reader-") as folder:
        path = Path(folder) / "labels.nii.gz"
        reader.write_seg(labels, str(path), properties)
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    back = back.reshape(volume_shape) if back.size == int(np.prod(volume_shape)) else back
    if tuple(back.shape) != tuple(volume_shape):
        raise InputError("labels", f"{name} wrote a {back.shape} label map for a {volume_shape} image")
    return np.ascontiguousarray(back)

"""Reading images into :class:`Volume` and writing results atomically, through SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd) and DICOM series folders.
"""
from __future__ import annotations

import gzip
import os
import pickle
import re
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .safe_output import atomic_output
from .volume import Geometry, Volume

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_CHANNEL_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def image_suffix(path: Path) -> str | None:
    """The image file type of ``path`` ('.nii.gz', '.nrrd', ...) or None if it is not one we read."""
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_suffix(path: Path) -> str:
    """File name without its image suffix ('case_0000.nii.gz' -> 'case_0000')."""
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def is_dicom_folder(path: Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM series."""
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _read_itk(path: Path) -> sitk.Image:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        return _read_dicom_series(path)
    suffix = image_suffix(path)
    if suffix is None:
        raise InputError(path, f"unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _itk_messages_captured():
            reader.ReadImageInformation()
            if suffix in (".nii", ".nii.gz"):
                _check_nifti_complete(path, reader)
            return reader.Execute()
    except RuntimeError as error:
        raise InputError(path, f"cannot read image ({_itk_reason(error)})") from None


@contextmanager
def _itk_messages_captured() -> Iterator[None]:
    """Keep ITK's C++ libraries from printing to the terminal (file descriptor 2); our error says it once."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check_nifti_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """Raise if a NIfTI file holds fewer voxel bytes than its header promises (ITK would pad them with zeros)."""
    keys = set(reader.GetMetaDataKeys())
    if not {"vox_offset", "bitpix"} <= keys:
        return
    voxels = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents()
    expected = int(float(reader.GetMetaData("vox_offset"))) + voxels * int(reader.GetMetaData("bitpix")) // 8
    if image_suffix(path) == ".nii":
        complete = path.stat().st_size >= expected
    else:
        complete = _gzip_trailer_size(path) == expected % 2**32 or _decompressed_length(path) == expected
    if not complete:
        raise InputError(path, "file is truncated or corrupt (fewer voxel bytes than its header describes)")


def _gzip_trailer_size(path: Path) -> int:
    """The uncompressed size (mod 2**32) a complete gzip file records in its last four bytes."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def _decompressed_length(path: Path) -> int:
    """Uncompressed length by decompressing (-1 for a broken stream); used only when the trailer disagrees."""
    try:
        with gzip.open(path, "rb") as stream:
            return stream.seek(0, os.SEEK_END)
    except (OSError, EOFError, zlib.error):
        return -1


def _read_dicom_series(folder: Path) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(folder, "folder holds no DICOM series and no image file")
    files_per_series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids]
    largest = max(files_per_series, key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(largest)
    try:
        with _itk_messages_captured():
            return reader.Execute()
    except RuntimeError as error:
        raise InputError(folder, f"cannot read DICOM series ({_itk_reason(error)})") from None


def _itk_reason(error: RuntimeError) -> str:
    """ITK's description of a read failure, or 'truncated or corrupt' when it only left a stale system error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Description:" in line:
            reason = line.split("Description:", 1)[1].strip().rstrip(".")
            if reason and not reason.startswith("Reason:"):
                return reason[:200]
    return "file is truncated or corrupt"


def _geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(
        size=tuple(int(s) for s in image.GetSize()),
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )


def _channels_of(image: sitk.Image, path: Path) -> np.ndarray:
    if image.GetDimension() not in (2, 3):
        raise InputError(path, f"{image.GetDimension()}D images are not supported; give one 2D or 3D file per channel")
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    if image.GetDimension() == 2:
        array = array[:, None]
    return array.astype(np.float32, copy=False)


def read_volume(paths: Path | str | Sequence[Path | str]) -> Volume:
    """Read one image file, one DICOM folder, or one file per channel into a :class:`Volume`.

    All channel files must share size and spacing; the first one's geometry is kept.
    """
    path_list = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not path_list:
        raise InputError(None, "no input image given")
    channels: list[np.ndarray] = []
    geometry: Geometry | None = None
    for path in path_list:
        image = _read_itk(path)
        this_geometry = _geometry_of(image)
        if geometry is None:
            geometry = this_geometry
        elif this_geometry.size != geometry.size:
            raise InputError(path, f"size {this_geometry.size} differs from the first channel's {geometry.size}")
        elif not np.allclose(this_geometry.spacing, geometry.spacing, rtol=1e-4):
            raise InputError(path, f"spacing {this_geometry.spacing} differs from the first channel's {geometry.spacing}")
        channels.append(_channels_of(image, path))
    assert geometry is not None
    return Volume(array=np.concatenate(channels, axis=0), geometry=geometry, sources=tuple(path_list))


def find_cases(folder: Path, num_channels: int) -> dict[str, list[Path]]:
    """Group an nnU-Net input folder into cases: ``{case_id: [case_0000.ext, case_0001.ext, ...]}``.

    Files that do not follow nnU-Net's ``_XXXX`` channel naming are taken as single-channel cases when the model
    has one channel. Raises :class:`InputError` for a case with missing channels.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and image_suffix(p) is not None and not p.name.startswith("."))
    cases: dict[str, dict[int, Path]] = {}
    for file in files:
        match = _CHANNEL_NAME.match(strip_suffix(file))
        if match:
            cases.setdefault(match["case"], {})[int(match["channel"])] = file
        elif num_channels == 1:
            cases.setdefault(strip_suffix(file), {})[0] = file
    result: dict[str, list[Path]] = {}
    for case, channel_files in sorted(cases.items()):
        missing = [c for c in range(num_channels) if c not in channel_files]
        if missing:
            first = next(iter(channel_files.values()))
            names = ", ".join(f"{case}_{c:04d}" for c in missing)
            raise InputError(first, f"case '{case}' lacks channel file(s) {names}; the model needs {num_channels} channel(s)")
        result[case] = [channel_files[c] for c in range(num_channels)]
    if not result:
        raise InputError(folder, "no input images found (expected files such as case_0000.nii.gz)")
    return result


def labels_to_image(labels: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Wrap a (z, y, x) label array in a SimpleITK image with ``geometry`` (uint8, or uint16 beyond 254 labels)."""
    dtype = np.uint8 if labels.max(initial=0) < 255 else np.uint16
    array = labels.astype(dtype, copy=False)
    if geometry.ndim == 2:
        array = array.reshape(array.shape[-2:])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def write_labels(labels: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a label map with the input's geometry, atomically, compressed where the format allows."""
    if tuple(labels.shape[::-1][: geometry.ndim]) != geometry.size:
        raise ValueError(f"label shape {labels.shape} does not match geometry size {geometry.size}")
    image = labels_to_image(labels, geometry)
    with atomic_output(path) as staging:
        sitk.WriteImage(image, str(staging), True)


def write_probabilities(probabilities: np.ndarray, properties: dict, path_truncated: Path) -> None:
    """Save class probabilities as nnU-Net does: ``<case>.npz`` (key 'probabilities') and ``<case>.pkl``."""
    npz = path_truncated.with_name(path_truncated.name + ".npz")
    pkl = path_truncated.with_name(path_truncated.name + ".pkl")
    with atomic_output(npz) as staging:
        with open(staging, "wb") as handle:
            np.savez_compressed(handle, probabilities=probabilities)
    with atomic_output(pkl) as staging:
        with open(staging, "wb") as handle:
            pickle.dump(properties, handle)

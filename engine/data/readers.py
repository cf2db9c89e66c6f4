"""Reading images into :class:`Volume` and writing results atomically, through SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd) and DICOM series folders.
"""
from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..runtime.quiet import silenced_fd2
from .volume import Geometry, Volume

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


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


def _read_itk(path: Path) -> tuple[sitk.Image, tuple[Path, ...]]:
    """The image at ``path`` and, for a DICOM series, its files in slice order."""
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
        with silenced_fd2():
            reader.ReadImageInformation()
            if suffix in (".nii", ".nii.gz"):
                _check_nifti_complete(path, reader)
            return reader.Execute(), ()
    except RuntimeError as error:
        raise InputError(path, f"cannot read image ({_itk_reason(error)})") from None


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


def _read_dicom_series(folder: Path) -> tuple[sitk.Image, tuple[Path, ...]]:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(folder, "folder holds no DICOM series and no image file")
    files_per_series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids]
    largest = max(files_per_series, key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(largest)
    try:
        with silenced_fd2():
            return reader.Execute(), tuple(Path(name) for name in largest)
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
    dicom_files: tuple[Path, ...] = ()
    for path in path_list:
        image, series_files = _read_itk(path)
        dicom_files = dicom_files or series_files
        this_geometry = _geometry_of(image)
        if geometry is None:
            geometry = this_geometry
        elif this_geometry.size != geometry.size:
            raise InputError(path, f"size {this_geometry.size} differs from the first channel's {geometry.size}")
        elif not np.allclose(this_geometry.spacing, geometry.spacing, rtol=1e-4):
            raise InputError(path, f"spacing {this_geometry.spacing} differs from the first channel's {geometry.spacing}")
        channels.append(_channels_of(image, path))
    assert geometry is not None
    return Volume(array=np.concatenate(channels, axis=0), geometry=geometry, sources=tuple(path_list),
                  dicom_files=dicom_files)






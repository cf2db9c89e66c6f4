"""Reading images into :class:`Volume`, through SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), and DICOM (:mod:`.dicom.series`): a folder
(its largest image series, at any depth, or the one asked for), a zip of one, a multi-frame enhanced CT/MR/PET file
or one file of a series.
"""
from __future__ import annotations

import gzip
import os
import shutil
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..runtime.quiet import silenced_fd2
from .dicom.series import choose, is_dicom_file, is_dicom_folder, read_dicom, scan
from .dicom.zips import check_archive, is_zip, unpack
from .volume import Geometry, Volume

__all__ = ["IMAGE_SUFFIXES", "ImageHeader", "image_suffix", "is_dicom_folder", "is_dicom_input", "read_header",
           "read_volume", "strip_suffix"]

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


def is_dicom_input(path: Path) -> bool:
    """True for what is read as DICOM: a folder holding DICOM files, a ``.zip`` file, or a DICOM file."""
    return is_dicom_folder(path) or is_zip(path) or (path.is_file() and image_suffix(path) is None
                                                         and is_dicom_file(path))


SeriesUid = str | Sequence[str] | None
"""The DICOM series to read: one UID, several (each DICOM input holds exactly one of them), or None for the largest."""


def _read_itk(path: Path, series_uid: SeriesUid) -> tuple[sitk.Image, tuple[Path, ...], Path | None]:
    """The image at ``path``, for DICOM its files in slice order, and the temporary folder a zip was unpacked to
    (which holds those files; None for anything else)."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir() or (image_suffix(path) is None and is_dicom_file(path)):
        read = read_dicom(path, series_uid)
        return read.image, read.files, None
    if is_zip(path):
        folder = unpack(path)
        try:
            read = read_dicom(folder, series_uid)
        except InputError as error:  # name the zip, not the temporary folder
            shutil.rmtree(folder, ignore_errors=True)
            raise InputError(path, error.problem) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return read.image, read.files, folder
    suffix = image_suffix(path)
    if suffix is None:
        raise InputError(path, f"unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)}, a DICOM "
                               "folder, file or .zip)")
    reader = _header_reader(path, suffix)
    try:
        with silenced_fd2():
            return reader.Execute(), (), None
    except RuntimeError as error:
        raise InputError(path, f"cannot read image ({_itk_reason(error)})") from None


def _header_reader(path: Path, suffix: str) -> sitk.ImageFileReader:
    """An ITK reader of ``path`` with its header read (and a NIfTI's length checked against it); raises
    :class:`InputError` for a file that cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with silenced_fd2():
            reader.ReadImageInformation()
            if suffix in (".nii", ".nii.gz"):
                _check_nifti_complete(path, reader)
    except RuntimeError as error:
        raise InputError(path, f"cannot read image ({_itk_reason(error)})") from None
    return reader


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
    """The image's voxels as (channels, z, y, x): a view of ITK's buffer, valid while ``image`` lives."""
    if image.GetDimension() not in (2, 3):
        raise InputError(path, f"{image.GetDimension()}D images are not supported; give one 2D or 3D file per channel")
    array = sitk.GetArrayViewFromImage(image)  # a view: a copy would hold the image twice until the float32 copy
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    if image.GetDimension() == 2:
        array = array[:, None]
    return array


def read_volume(paths: Path | str | Sequence[Path | str], series_uid: SeriesUid = None) -> Volume:
    """Read one image file, one DICOM input, or one file per channel into a :class:`Volume`.

    All channel files must share size and spacing; the first one's geometry is kept. ``series_uid`` picks the
    DICOM series to read (default: the largest image volume); it is an error when no input is DICOM. For a zip,
    ``Volume.dicom_files`` lie in a temporary folder that is removed when the Volume is.
    """
    path_list = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not path_list:
        raise InputError(None, "no input image given")
    if series_uid is not None and not any(is_dicom_input(p) for p in path_list):
        raise InputError(path_list[0], "a DICOM series UID was given, but this is no DICOM input")
    array: np.ndarray | None = None
    geometry: Geometry | None = None
    dicom_files: tuple[Path, ...] = ()
    unpacked: list[Path] = []
    try:
        for path in path_list:
            image, series_files, folder = _read_itk(path, series_uid)
            unpacked += [folder] if folder is not None else []
            dicom_files = dicom_files or series_files
            this_geometry = _geometry_of(image)
            if geometry is None:
                geometry = this_geometry
            elif this_geometry.size != geometry.size:
                raise InputError(path, f"size {this_geometry.size} differs from the first channel's {geometry.size}")
            elif not np.allclose(this_geometry.spacing, geometry.spacing, rtol=1e-4):
                raise InputError(path, f"spacing {this_geometry.spacing} differs from the first channel's "
                                       f"{geometry.spacing}")
            view = _channels_of(image, path)
            # filled channel by channel and each ITK image dropped at once: one float32 volume plus one input image
            array = view.astype(np.float32) if array is None else np.concatenate([array, view], axis=0, dtype=np.float32)
            del image, view
    except BaseException:
        for folder in unpacked:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    assert geometry is not None and array is not None
    volume = Volume(array=array, geometry=geometry, sources=tuple(path_list),
                    dicom_files=dicom_files)
    for folder in unpacked:  # dicom_files stay readable (for DICOM SEG references) while the Volume lives
        weakref.finalize(volume, shutil.rmtree, folder, ignore_errors=True)
    return volume


@dataclass(frozen=True)
class ImageHeader:
    """What an input's header says, read without its voxels: dimensions, voxels (0 when unknown) and channels."""

    path: Path
    dimension: int
    voxels: int
    components: int = 1


def read_header(path: Path, series_uid: SeriesUid = None) -> ImageHeader | None:
    """The header of an image file, or of the DICOM series a folder would give (the same choice :func:`read_volume`
    makes), read in well under a second; a zip is checked for safety without unpacking (None: its series is known
    once unpacked), as is a single DICOM file (None). Raises :class:`InputError` in one line for what
    :func:`read_volume` would refuse from the header: a missing, unreadable, truncated or 4D file, a DICOM folder
    without a usable series, an unsafe zip."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        chosen = choose(scan(path), path, series_uid)
        return ImageHeader(path, 3, chosen.voxels)
    if is_zip(path):
        check_archive(path)
        return None
    suffix = image_suffix(path)
    if suffix is None:
        return None
    reader = _header_reader(path, suffix)
    size = reader.GetSize()
    dimension = reader.GetDimension()
    if dimension == 4 and size[3] == 1:
        dimension = 3  # a 4D header with one volume reads as 3D
    if dimension not in (2, 3):
        raise InputError(path, f"{dimension}D images are not supported; give one 2D or 3D file per channel")
    return ImageHeader(path, dimension, int(np.prod(size)), int(reader.GetNumberOfComponents()))

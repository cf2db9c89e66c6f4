"""Is a file just written whole? Cheap checks of every byte, run on the staged file before it gets its final name.

ITK's writers can leave a short file and return normally (NIfTI prints ``NWAD: wrote only N of M bytes`` and goes
on), and SimpleITK reads such a truncated .nii without an error; a gzip stream cut short is only found by reading it
to its end. So each check compares what is on the disk with what was meant, and raises
:class:`~.safe_output.IncompleteFile` when they differ:

- every image: the header is read back (``ImageFileReader.ReadImageInformation``) and its size, spacing and pixel
  type compared with the image written;
- uncompressed data (.nii, raw NRRD or MetaImage): the file's size against header + voxel bytes (no reading);
- compressed data (.nii.gz, gzip NRRD, zlib MetaImage): the stream is decompressed to its end, which checks its
  CRC/Adler checksum, and its length compared with the voxel bytes. This is most of the check's cost: on the demo
  sample's labels (8 MB of voxels, a 164 kB .nii.gz) about 30 ms against the 96 ms the write takes, and about as
  long as the write itself for MetaImage and NRRD, which ITK compresses at a faster level. A check of the gzip
  trailer alone would cost nothing but misses a gap in the middle of the stream (a write that failed and went on);
  against a prediction of seconds to minutes per case, every byte is worth its tens of milliseconds;
- DICOM (SEG, RTSTRUCT): the file's size against the bytes pydicom wrote, and the whole file read back with
  ``dcmread`` (its SOP Instance UID compared);
- .npz: the size against the bytes written, and every member's CRC (``ZipFile.testzip``).
"""
from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import SimpleITK as sitk

from .safe_output import IncompleteFile

_CHUNK = 1 << 20  # read 1 MiB of compressed data at a time: memory stays flat whatever the image's size
_OUT_CHUNK = 1 << 16  # and decompress it 64 KiB at a time: the output stays in the CPU cache (33 ms, not 50, for 8 MB)


def voxel_bytes(image: sitk.Image) -> int:
    """How many bytes ``image``'s voxels take uncompressed."""
    item = sitk.GetArrayViewFromImage(image).itemsize
    return image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * item


def _check_header(path: Path, size: tuple[int, ...], spacing: tuple[float, ...], pixel_id: int) -> None:
    """Read ``path``'s header back and compare its size, spacing and pixel type with those meant."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise IncompleteFile("its header cannot be read back") from None
    if tuple(reader.GetSize()) != tuple(size):
        raise IncompleteFile(f"its header says size {reader.GetSize()}, not {tuple(size)}")
    if not np.allclose(reader.GetSpacing(), spacing, rtol=1e-5):
        raise IncompleteFile(f"its header says spacing {reader.GetSpacing()}, not {tuple(spacing)}")
    if reader.GetPixelID() != pixel_id:
        raise IncompleteFile("its header gives another pixel type")


def _stream_length(handle: BinaryIO, decompress: Any) -> int:
    """The decompressed length of the rest of ``handle`` (``decompress``: a zlib decompressor); raises
    :class:`IncompleteFile` when the stream is cut short or corrupt."""
    total = 0
    try:
        while (chunk := handle.read(_CHUNK)) and not decompress.eof:
            total += len(decompress.decompress(chunk, _OUT_CHUNK))
            while decompress.unconsumed_tail and not decompress.eof:
                total += len(decompress.decompress(decompress.unconsumed_tail, _OUT_CHUNK))
        total += len(decompress.flush())
    except zlib.error as error:
        raise IncompleteFile(f"its compressed data is corrupt ({error})") from None
    if not decompress.eof:
        raise IncompleteFile("its compressed data ends early")
    return total


def _gzip_length(path: Path, offset: int = 0) -> int:
    """The decompressed length of the gzip stream in ``path`` from ``offset`` (CRC and length trailer checked)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return _stream_length(handle, zlib.decompressobj(wbits=31))


def _nifti_header_bytes(header: bytes) -> int:
    """Where a NIfTI-1/2 file's voxels start (``vox_offset``), from its first bytes."""
    for order in ("<", ">"):
        size = struct.unpack_from(order + "i", header, 0)[0]
        if size == 348:
            return int(struct.unpack_from(order + "f", header, 108)[0])
        if size == 540:
            return int(struct.unpack_from(order + "q", header, 168)[0])
    raise IncompleteFile("its NIfTI header is not readable")


def _check_nifti(path: Path, data_bytes: int) -> None:
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            try:
                start = _nifti_header_bytes(handle.read(544))
            except (OSError, EOFError, struct.error):
                raise IncompleteFile("its NIfTI header is not readable") from None
        length = _gzip_length(path)
        meant = f"{length} of {start + data_bytes} bytes after decompression"
    else:
        with open(path, "rb") as handle:
            try:
                start = _nifti_header_bytes(handle.read(544))
            except struct.error:
                raise IncompleteFile("its NIfTI header is not readable") from None
        length = path.stat().st_size
        meant = f"{length} of {start + data_bytes} bytes"
    if length != start + data_bytes:
        raise IncompleteFile(meant)


def _nrrd_header(path: Path) -> tuple[dict[str, str], int]:
    """A NRRD file's ``field: value`` lines (lower-case fields) and where its data starts (after the blank line)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    stop = head.find(b"\n\n")
    if stop < 0:
        raise IncompleteFile("its header is cut short")
    fields: dict[str, str] = {}
    for line in head[:stop].decode("latin-1").splitlines():
        key, separator, value = line.partition(":")
        if separator and not value.startswith("="):  # 'key:=value' lines are free text
            fields[key.strip().lower()] = value.strip()
    return fields, stop + 2


def _check_nrrd(path: Path, data_bytes: int) -> None:
    fields, start = _nrrd_header(path)
    if "data file" in fields or "datafile" in fields:
        return  # detached data (.nhdr): ITK does not write it for '.nrrd'; the header check is all there is
    encoding = fields.get("encoding", "raw")
    if encoding == "raw":
        length = path.stat().st_size - start
    elif encoding in ("gzip", "gz"):
        length = _gzip_length(path, start)
    else:
        return  # text or bzip2 encodings: ITK never writes them
    if length != data_bytes:
        raise IncompleteFile(f"{length} of {data_bytes} voxel bytes")


def _metaimage_header(path: Path) -> tuple[dict[str, str], int]:
    """A MetaImage header's ``Key = Value`` lines (lower-case keys) up to ``ElementDataFile`` (always the last)
    and where the data starts in this file when it is 'LOCAL'."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    marker = head.find(b"ElementDataFile")
    line_end = head.find(b"\n", marker)
    if marker < 0 or line_end < 0:
        raise IncompleteFile("its header is cut short")
    fields: dict[str, str] = {}
    for line in head[:line_end].decode("latin-1").splitlines():
        key, separator, value = line.partition("=")
        if separator:
            fields[key.strip().lower()] = value.strip()
    return fields, line_end + 1


def _check_metaimage(path: Path, data_bytes: int) -> None:
    fields, start = _metaimage_header(path)
    data_file = fields.get("elementdatafile", "LOCAL")
    source = path
    if data_file != "LOCAL":
        source, start = path.parent / data_file, 0
    stored = source.stat().st_size - start
    if fields.get("compresseddata", "false").lower() != "true":
        length = stored
    else:
        meant_stored = int(fields.get("compresseddatasize", stored))
        if stored != meant_stored:
            raise IncompleteFile(f"{stored} of {meant_stored} compressed bytes")
        with open(source, "rb") as handle:
            handle.seek(start)
            length = _stream_length(handle, zlib.decompressobj())
    if length != data_bytes:
        raise IncompleteFile(f"{length} of {data_bytes} voxel bytes")


def check_image_file(path: Path, image: sitk.Image) -> None:
    """Raise :class:`IncompleteFile` unless ``path`` holds all of ``image`` (header read back, data length and
    compressed streams checked: see the module's docstring)."""
    check_image_file_meant(path, image.GetSize(), image.GetSpacing(), image.GetPixelID(), voxel_bytes(image))


def check_image_file_meant(path: Path, size: tuple[int, ...], spacing: tuple[float, ...], pixel_id: int,
                           data_bytes: int) -> None:
    """:func:`check_image_file` without the image in memory (a file written slab by slab): raise
    :class:`IncompleteFile` unless ``path``'s header gives ``size``, ``spacing`` and the SimpleITK ``pixel_id`` and
    its data holds ``data_bytes`` bytes."""
    _check_header(path, size, spacing, pixel_id)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, data_bytes)
    elif name.endswith(".nrrd"):
        _check_nrrd(path, data_bytes)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, data_bytes)


def check_size(path: Path, meant: int) -> None:
    """Raise :class:`IncompleteFile` unless ``path`` holds ``meant`` bytes."""
    size = path.stat().st_size
    if size != meant:
        raise IncompleteFile(f"{size} of {meant} bytes on the disk")


def save_dicom_checked(dataset: Any, staged: Path) -> None:
    """Save a pydicom ``dataset`` (a highdicom SEG, an RTSTRUCT) at ``staged`` and check it: the size against the
    bytes pydicom wrote, then the whole file read back with ``dcmread`` and its SOP Instance UID compared."""
    import pydicom

    with open(staged, "wb") as handle:
        dataset.save_as(handle)
        meant = handle.tell()
    check_size(staged, meant)
    try:
        copy = pydicom.dcmread(staged, force=True)  # force: a dataset saved without the 128-byte preamble
    except Exception as error:  # noqa: BLE001 - pydicom raises many kinds on a damaged file
        raise IncompleteFile(f"it cannot be read back ({error})") from None
    if copy.get("SOPInstanceUID") != dataset.get("SOPInstanceUID"):
        raise IncompleteFile("it reads back as another instance")


def save_npz_checked(staged: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` at ``staged``, then the size against the bytes written and every member's CRC."""
    with open(staged, "wb") as handle:
        np.savez_compressed(handle, **arrays)
        meant = handle.tell()
    check_size(staged, meant)
    try:
        with zipfile.ZipFile(staged) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise IncompleteFile(f"the archive cannot be read back ({error})") from None
    if broken is not None:
        raise IncompleteFile(f"{broken} in the archive is damaged")

"""DICOM inputs: the image series of a folder (at any depth) or a zip, which one to read, and multi-frame enhanced
CT/MR/PET objects.

- A folder is searched recursively (PACS exports and CDs nest series as ``DICOM/ST000/SE000/IM0001`` next to a
  ``DICOMDIR``), hidden files and folders left out; only DICOM Part 10 files (the ``DICM`` marker) count.
- Every series is classified from its headers (pydicom): an image volume, or what it is instead (a SR, a SEG, an
  RTSTRUCT, a presentation state, a localizer, a series of too few slices, one whose slices cannot form one regular
  volume). By default the largest volume (most voxels) is read; ``series_uid`` picks one, and any other object is
  never read as an image.
- Slices are sorted by their position along the slice normal (the cross product of the row and column directions),
  as GDCM's sorter does. A series whose slices mix orientations, share positions (several echoes or phases), have
  uneven gaps (missing slices) or are sheared (gantry tilt) is refused with one line saying so: any of these would
  put the labels in the wrong place.
- Single-frame series are decoded by SimpleITK/GDCM (every transfer syntax GDCM knows); multi-frame enhanced
  objects by pydicom, frame by frame from their functional groups (:mod:`.geometry`), with the geometry
  SimpleITK gives the equivalent single-frame series.

"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from ...errors import InputError
from ...runtime.quiet import silenced_fd2
from .geometry import floats, frame_geometry, multiframe_image, stack_order

MIN_SLICES = 3
"""Fewer slices than this are no volume to segment (a localizer, a key image)."""

ENHANCED_VOLUME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET",
}
NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "DOC", "REG", "PLAN",
                        "FID", "RWV", "AU", "ECG", "HD"}
MEDIA_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"
_HEADER_TAGS = ["SOPClassUID", "SeriesInstanceUID", "Modality", "NumberOfFrames", "ImageType", "Rows", "Columns",
                "ImageOrientationPatient", "ImagePositionPatient"]


@dataclass(frozen=True)
class DicomRead:
    """A DICOM input read: the image and its files in the order of the image's z slices (one file for a multi-frame
    object)."""

    image: sitk.Image
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Series:
    """One series as its headers describe it; ``problem`` says why it is no image volume (None when it is one)."""

    uid: str
    what: str
    """'CT, 120 slices', 'SR (Comprehensive SR)', 'CT localizer, 1 slice', 'MR multi-frame (Enhanced MR), 40 frames'."""
    files: tuple[Path, ...]
    """For a volume: in z order (one file for a multi-frame object)."""
    voxels: int = 0
    problem: str | None = None
    multiframe: bool = False


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file (the 'DICM' marker after its 128-byte preamble), whatever its name."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _files_under(folder: Path) -> Iterator[Path]:
    """Every non-hidden file under ``folder``, at any depth, in sorted order (links to folders are not followed)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / n for n in sorted(names) if not n.startswith("."))


def is_dicom_folder(path: Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM file, at any depth (whether it holds an image
    volume is for :func:`read_dicom` to say, in one line)."""
    return path.is_dir() and any(is_dicom_file(p) for p in _files_under(path))


# ---- classification -------------------------------------------------------------------------------------------
def _class_name(uid: str) -> str:
    name = ENHANCED_VOLUME_CLASSES.get(uid) or pydicom.uid.UID(uid).name
    return name.removesuffix(" Storage").removesuffix(" Image")


def _header(path: Path) -> Any:
    """The tags that classify ``path`` (pixel data and most of the header left unread), or None for a file pydicom
    cannot parse."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError):
        return None


def _is_image(header: Any) -> bool:
    return (header.get("Modality", "") not in NON_IMAGE_MODALITIES and "Rows" in header
            and str(header.get("SOPClassUID", "")) not in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.2"))


def _describe(uid: str, headers: list[tuple[Path, Any]]) -> Series:
    """Classify the objects of one series."""
    first = headers[0][1]
    modality = str(first.get("Modality", "") or "?")
    sop = str(first.get("SOPClassUID", ""))
    if not all(_is_image(h) for _, h in headers):
        return Series(uid, f"{modality} ({_class_name(sop)})", tuple(p for p, _ in headers), problem="not an image")
    if sop in ENHANCED_VOLUME_CLASSES:
        if len(headers) > 1:
            return Series(uid, f"{modality} multi-frame ({_class_name(sop)}), {len(headers)} objects",
                          tuple(p for p, _ in headers),
                          problem="several multi-frame objects in one series; give the file to read")
        return _describe_multiframe(uid, headers[0][0], modality)
    frames = max(int(h.get("NumberOfFrames", 1) or 1) for _, h in headers)
    if frames > 1:
        return Series(uid, f"{modality} multi-frame ({_class_name(sop)})", tuple(p for p, _ in headers),
                      problem="a multi-frame object that is no CT, MR or PET volume")
    slices = [(p, h) for p, h in headers if "LOCALIZER" not in [str(t).upper() for t in h.get("ImageType", [])]]
    if not slices:
        count = len(headers)
        return Series(uid, f"{modality} localizer, {count} slice{'s' * (count > 1)}", tuple(p for p, _ in headers),
                      problem="a localizer")
    files = tuple(p for p, _ in slices)
    what = f"{modality}, {len(slices)} slice{'s' * (len(slices) > 1)}"
    if len(slices) < MIN_SLICES:
        return Series(uid, what, files, problem=f"too few slices for a volume (fewer than {MIN_SLICES})")
    if len({(int(h.Rows), int(h.Columns)) for _, h in slices}) > 1:
        return Series(uid, what, files, problem="its slices differ in size")
    orientations = [floats(h.get("ImageOrientationPatient"), 6) for _, h in slices]
    positions = [floats(h.get("ImagePositionPatient"), 3) for _, h in slices]
    if any(o is None for o in orientations) or any(p is None for p in positions):
        return Series(uid, what, files, problem="its slices carry no patient position and orientation")
    order, problem = stack_order(np.stack(orientations), np.stack(positions))
    rows, columns = int(first.Rows), int(first.Columns)
    return Series(uid, what, tuple(files[i] for i in order), len(slices) * rows * columns, problem)


def _describe_multiframe(uid: str, path: Path, modality: str) -> Series:
    """Classify one multi-frame enhanced object from its functional groups (its pixel data left unread)."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    sop = str(dataset.SOPClassUID)
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    what = f"{modality} multi-frame ({_class_name(sop)}), {count} frame{'s' * (count > 1)}"
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        return Series(uid, what, (path,), problem="a colour image", multiframe=True)
    if count < MIN_SLICES:
        return Series(uid, what, (path,), problem=f"too few frames for a volume (fewer than {MIN_SLICES})",
                      multiframe=True)
    frames = frame_geometry(dataset, path)
    _, problem = stack_order(frames.orientations, frames.positions)
    return Series(uid, what, (path,), count * int(dataset.Rows) * int(dataset.Columns), problem, multiframe=True)


def scan(folder: Path) -> list[Series]:
    """Every DICOM series under ``folder`` (at any depth), classified; sorted by UID."""
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for path in (p for p in _files_under(folder) if is_dicom_file(p)):
        header = _header(path)
        if header is None or str(header.get("SOPClassUID", "")) == MEDIA_DIRECTORY_CLASS:
            continue  # a DICOMDIR indexes the files; it is none of them
        by_series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    return [_describe(uid, by_series[uid]) for uid in sorted(by_series)]


# ---- choosing -------------------------------------------------------------------------------------------------
def _listing(series: Sequence[Series], with_uids: bool, limit: int = 4) -> str:
    """'1.2.3 (CT, 120 slices); 1.2.4 (SR (Comprehensive SR) [not an image])', at most ``limit`` of them."""
    def one(s: Series) -> str:
        what = s.what if s.problem is None else f"{s.what} [{s.problem}]"
        return f"{s.uid} ({what})" if with_uids else what

    shown = "; ".join(one(s) for s in series[:limit])
    return shown + (f"; and {len(series) - limit} more" if len(series) > limit else "")


def choose(series: Sequence[Series], where: Path, series_uid: str | Sequence[str] | None = None) -> Series:
    """The series to read: the one of ``series_uid`` (one UID, or several of which ``where`` holds exactly one),
    else the largest image volume. Raises :class:`InputError` with one line listing what ``where`` holds when
    that series is missing or is no image volume, or when no series is one."""
    if not series:
        raise InputError(where, "holds no DICOM series and no image file")
    if series_uid is not None:
        wanted = {series_uid} if isinstance(series_uid, str) else set(series_uid)
        chosen = [s for s in series if s.uid in wanted]
        if not chosen:
            volumes = [s for s in series if s.problem is None] or list(series)
            raise InputError(where, f"holds no series {' or '.join(sorted(wanted))}; it holds: {_listing(volumes, True)}")
        if len(chosen) > 1:
            raise InputError(where, f"holds several of the series asked for ({', '.join(s.uid for s in chosen)}); "
                                    "give one per input")
        if chosen[0].problem is not None:
            raise InputError(where, f"series {chosen[0].uid} ({chosen[0].what}) is no image volume: "
                                    f"{chosen[0].problem}")
        return chosen[0]
    volumes = [s for s in series if s.problem is None]
    if not volumes:
        raise InputError(where, f"holds no image volume to segment, only: {_listing(series, False)}")
    return max(volumes, key=lambda s: (s.voxels, len(s.files)))


# ---- reading --------------------------------------------------------------------------------------------------
def _series_image(files: Sequence[Path], where: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        with silenced_fd2():
            return reader.Execute()
    except RuntimeError as error:
        raise InputError(where, f"cannot read DICOM series ({str(error).strip().splitlines()[-1][:200]})") from None


def read_dicom(path: Path, series_uid: str | Sequence[str] | None = None) -> DicomRead:
    """Read a DICOM input: a folder (its largest image volume, or ``series_uid``), a multi-frame object's file, or
    one file of a series (that series, from the file's folder). Raises :class:`InputError` in one line."""
    if path.is_dir():
        chosen = choose(scan(path), path, series_uid)
    else:
        header = _header(path)
        if header is None:
            raise InputError(path, "not a readable DICOM file")
        uid = str(header.get("SeriesInstanceUID", ""))
        if str(header.get("SOPClassUID", "")) in ENHANCED_VOLUME_CLASSES:
            chosen = choose([_describe(uid, [(path, header)])], path, series_uid)
        else:  # one file of a series stands for the series in its folder
            chosen = choose([s for s in scan(path.parent) if s.uid == uid], path, series_uid or uid)
    if chosen.multiframe:
        return DicomRead(multiframe_image(pydicom.dcmread(chosen.files[0]), chosen.files[0]), chosen.files)
    return DicomRead(_series_image(chosen.files, path), chosen.files)

"""Label files written slab by slab: the header first, then rows of z slices in order, so that the host never holds
the whole label map (issue 27: many labels on a huge grid make it the largest object).

Formats: ``.nii``, ``.nii.gz`` (NIfTI-1), ``.nrrd`` (gzip encoding) and ``.mha`` (MetaImage, zlib), each as
SimpleITK's ``WriteImage(image, path, True)`` writes it. The header is SimpleITK's own: it writes a one-voxel image
with the same spacing, origin, direction and pixel type, and only the size fields (and MetaImage's compressed size)
are changed, so the geometry reads back exactly as from :func:`~.writers.write_labels`. The file is staged, checked
and published as every output is (:func:`~.safe_output.atomic_output`, :func:`~.write_checks.check_image_file_meant`);
nothing is ever under the final name unless whole.

Memory: the writer keeps no slab between calls; :meth:`SlabLabelFile.write` copies the caller's slab only when it
is not C-contiguous in the file's pixel type, and otherwise holds the compressor's state (about 260 kB for zlib), the
header (under 1 kB) and, while the finished file is checked, 1 MiB of it at a time. Measured
(tests/test_slab_file.py): writing 512 x 512 x 200 labels in 10-row slabs (2.6 MB each) raises the process's peak
memory by 1.8 to 3.3 MB, the test's own slabs included, whatever the format.
"""
from __future__ import annotations

import re
import struct
import zlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from .safe_output import IncompleteFile, atomic_output
from .volume import Geometry
from .write_checks import check_image_file_meant
from .writers import write_image_checked

SLAB_WISE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# Levels 1 to 3 are zlib's fast strategy: on 512 x 512 x 200 labels (104 labels on 17 % of the voxels,
# tests/bench_slab_file.py) they compress 650-700 MB/s of one core, level 4 310, 6 (gzip's default) 234; 3 makes the
# smallest file of the three (0.96 MB of 52 MB; 6: 0.62 MB), so writing keeps pace with the tiles beside it.
COMPRESSION_LEVEL = 3
_GZIP, _ZLIB = 31, 15  # zlib's wbits: a gzip stream (NIfTI .gz, NRRD) or a zlib stream (MetaImage)
_NIFTI1_DIM_LIMIT = 32767  # NIfTI-1 stores sizes as int16; ITK writes a larger image as NIfTI-2
_MHA_SIZE_DIGITS = 20  # MetaImage's CompressedDataSize is written zero-padded at this width and filled in at the end
_LABEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _slab_suffix(path: Path) -> str | None:
    name = Path(path).name.lower()
    if name.endswith(".seg.nrrd"):
        return None  # a 3D Slicer segmentation carries its own segment fields: the whole-volume writer's job
    return next((suffix for suffix in SLAB_WISE_SUFFIXES if name.endswith(suffix)), None)


def writes_slab_wise(path: Path, geometry: Geometry | None = None) -> bool:
    """Whether :class:`SlabLabelFile` can write ``path`` (and ``geometry``, when given: a 3D image that NIfTI-1 can
    hold); other outputs (.mhd/.nhdr split headers, DICOM, .seg.nrrd, 2D images) go through
    :func:`~.writers.write_labels`."""
    suffix = _slab_suffix(path)
    if suffix is None:
        return False
    if geometry is None:
        return True
    return geometry.ndim == 3 and (not suffix.startswith(".nii") or max(geometry.size) <= _NIFTI1_DIM_LIMIT)


@dataclass(frozen=True)
class _Layout:
    """How a file is laid out: ``plain`` bytes, then a stream (compressed with zlib ``wbits`` unless None) of
    ``streamed`` header bytes followed by the voxels; ``size_field`` is where MetaImage's compressed size goes."""

    plain: bytes
    streamed: bytes
    wbits: int | None
    size_field: int | None = None


def _reference_file(geometry: Geometry, dtype: np.dtype, path: Path) -> tuple[bytes, int]:
    """The bytes of the file SimpleITK writes at ``path`` for a one-voxel image with ``geometry``'s spacing, origin
    and direction and pixel type ``dtype`` (compressed where the format allows), and that image's SimpleITK pixel
    type. The file is removed."""
    image = sitk.GetImageFromArray(np.zeros((1, 1, 1), dtype))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    try:
        write_image_checked(image, path)
        return path.read_bytes(), image.GetPixelID()
    finally:
        path.unlink(missing_ok=True)


def _replace_once(header: bytes, pattern: bytes, replacement: bytes) -> bytes:
    """``header`` with the one line matching ``pattern`` replaced (a RuntimeError when SimpleITK wrote none)."""
    patched, count = re.subn(pattern, replacement, header, flags=re.MULTILINE)
    if count != 1:
        raise RuntimeError(f"SimpleITK's header has {count} lines matching {pattern!r}, not one")
    return patched


def _nifti_layout(reference: bytes, size: tuple[int, ...], itemsize: int, compressed: bool) -> _Layout:
    """NIfTI-1: the reference's 352 header bytes with dim[1..3] set to ``size``."""
    header = bytearray(reference[:-itemsize])
    order = "<" if struct.unpack_from("<i", header, 0)[0] == 348 else ">"
    if struct.unpack_from(order + "h", header, 40)[0] != 3 or struct.unpack_from(order + "f", header, 108)[0] != \
            len(header):
        raise RuntimeError("SimpleITK's NIfTI header is not that of a 3D image followed by its voxels")
    struct.pack_into(order + "3h", header, 42, *size)
    if compressed:
        return _Layout(b"", bytes(header), _GZIP)
    return _Layout(bytes(header), b"", None)


def _nrrd_layout(reference: bytes, size: tuple[int, ...]) -> _Layout:
    """NRRD: the reference's text header (to its blank line) with its ``sizes`` line set; the data is gzip."""
    end = reference.find(b"\n\n")
    header = _replace_once(reference[:end + 2], rb"^sizes: .*$", b"sizes: %d %d %d" % size)
    if b"\nencoding: gzip\n" not in header:
        raise RuntimeError("SimpleITK's NRRD header does not announce gzip data")
    return _Layout(header, b"", _GZIP)


def _metaimage_layout(reference: bytes, size: tuple[int, ...]) -> _Layout:
    """MetaImage: the reference's header (to ``ElementDataFile = LOCAL``) with ``DimSize`` set and
    ``CompressedDataSize`` zero-padded, to be filled in once the zlib stream is written (MetaIO reads leading
    zeros)."""
    marker = reference.find(b"ElementDataFile = LOCAL")
    header = reference[:reference.index(b"\n", marker) + 1]
    header = _replace_once(header, rb"^DimSize = .*$", b"DimSize = %d %d %d" % size)
    header = _replace_once(header, rb"^CompressedDataSize = \d+$",
                           b"CompressedDataSize = " + b"0" * _MHA_SIZE_DIGITS)
    field = header.index(b"CompressedDataSize = ") + len(b"CompressedDataSize = ")
    return _Layout(header, b"", _ZLIB, field)


class _Abandoned(Exception):
    """Thrown into :func:`atomic_output` to make it remove the staging folder instead of publishing."""


class SlabLabelFile(AbstractContextManager):
    """A label file written slab by slab along numpy's axis 0 (the file's z), staged, checked and published.

    ``SlabLabelFile(path, geometry, dtype, shape)`` stages the file and writes its header; :meth:`write` appends the
    next rows (a ``(rows, y, x)`` array, in order); :meth:`commit` checks the file and gives it its final name;
    :meth:`abort` removes it. As a context manager it commits on a normal exit and aborts on an exception. One
    thread at a time: open it anywhere, write and commit from the export thread.

    Raises ValueError for a format or geometry it cannot write (see :func:`writes_slab_wise`) and for a slab out of
    order or of the wrong shape or type (the file is then abandoned); a write that fails (no space, no permission,
    a short file) is one :class:`~tilewise.engine.errors.TilewiseError` naming ``path`` (exit 3), the file
    abandoned.
    """

    def __init__(self, path: Path, geometry: Geometry, dtype: np.dtype | type, shape: tuple[int, int, int]) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self._geometry = geometry
        self._validate()
        self._rows = 0
        self._handle: BinaryIO | None = None
        self._compressor: zlib._Compress | None = None
        self._output = atomic_output(self.path)
        self._staged = self._output.__enter__()
        self._open = True
        try:
            self._start()
        except (OSError, IncompleteFile) as error:
            self._fail(error)
        except BaseException:
            self.abort()  # the caller gets no object to abort: leave nothing behind
            raise

    def _validate(self) -> None:
        if self.dtype not in _LABEL_DTYPES:
            raise ValueError(f"label files are uint8 or uint16, not {self.dtype}")
        if len(self.shape) != 3 or self.shape[::-1] != tuple(self._geometry.size):
            raise ValueError(f"shape {self.shape} does not match the 3D geometry's size {self._geometry.size}")
        if not writes_slab_wise(self.path, self._geometry):
            raise ValueError(f"{self.path.name} cannot be written slab by slab; write it whole (write_labels)")

    def _start(self) -> None:
        """Write the header (SimpleITK's, for this geometry) and start the compressed stream."""
        suffix = _slab_suffix(self.path)
        reference_suffix = ".nii" if suffix == ".nii.gz" else suffix
        reference, self._pixel_id = _reference_file(self._geometry, self.dtype,
                                                    self._staged.with_name(f".header{reference_suffix}"))
        size = tuple(self._geometry.size)
        if suffix.startswith(".nii"):
            self._layout = _nifti_layout(reference, size, self.dtype.itemsize, suffix == ".nii.gz")
        elif suffix == ".nrrd":
            self._layout = _nrrd_layout(reference, size)
        else:
            self._layout = _metaimage_layout(reference, size)
        self._handle = open(self._staged, "wb")  # noqa: SIM115 - it stays open over the write() calls
        self._handle.write(self._layout.plain)
        if self._layout.wbits is not None:
            self._compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, self._layout.wbits)
        self._emit(self._layout.streamed)

    def _emit(self, data: bytes | memoryview) -> None:
        """Write ``data`` to the file, through the compressor when the format compresses."""
        assert self._handle is not None
        if self._compressor is not None:
            data = self._compressor.compress(data)
        if data:
            self._handle.write(data)

    @property
    def rows_written(self) -> int:
        """How many z slices have been written."""
        return self._rows

    def write(self, slab: np.ndarray) -> None:
        """Append ``slab``, the next ``(rows, y, x)`` z slices (uint8, or uint16 in a uint16 file)."""
        self._require_open()
        if slab.ndim != 3 or slab.shape[1:] != self.shape[1:] or self._rows + slab.shape[0] > self.shape[0]:
            self.abort()
            raise ValueError(f"slab of shape {slab.shape} does not fit after row {self._rows} of {self.shape}")
        if not np.can_cast(slab.dtype, self.dtype, "safe"):
            self.abort()
            raise ValueError(f"a {slab.dtype} slab does not fit a {self.dtype} label file")
        if slab.shape[0] == 0:  # e.g. no rows above nnU-Net's crop: nothing to add
            return
        try:
            self._emit(memoryview(np.ascontiguousarray(slab, self.dtype)).cast("B"))
        except OSError as error:
            self._fail(error)
        self._rows += slab.shape[0]

    def commit(self) -> None:
        """Finish the file, check it (header read back, every byte of the data) and give it its final name."""
        self._require_open()
        if self._rows != self.shape[0]:
            self.abort()
            raise ValueError(f"only {self._rows} of {self.shape[0]} rows were written")
        try:
            self._finish()
            check_image_file_meant(self._staged, self._geometry.size, self._geometry.spacing, self._pixel_id,
                                   int(np.prod(self.shape)) * self.dtype.itemsize)
        except (OSError, IncompleteFile) as error:
            self._fail(error)
        self._open = False
        self._output.__exit__(None, None, None)

    def _finish(self) -> None:
        """Flush the compressor, fill in MetaImage's compressed size and close the file."""
        assert self._handle is not None
        if self._compressor is not None:
            self._handle.write(self._compressor.flush())
        if self._layout.size_field is not None:
            stored = self._handle.tell() - len(self._layout.plain)
            self._handle.seek(self._layout.size_field)
            self._handle.write(b"%0*d" % (_MHA_SIZE_DIGITS, stored))
        self._close_handle()

    def abort(self) -> None:
        """Abandon the file: nothing under its final name, no staging folder left (a no-op once finished)."""
        if not self._open:
            return
        self._open = False
        self._close_handle(quietly=True)
        self._output.__exit__(_Abandoned, _Abandoned(), None)

    def _fail(self, error: BaseException) -> None:
        """Abandon the file and raise ``error`` as :func:`atomic_output` words it (one TilewiseError)."""
        self._open = False
        self._close_handle(quietly=True)
        self._output.__exit__(type(error), error, error.__traceback__)
        raise error

    def _close_handle(self, quietly: bool = False) -> None:
        handle, self._handle, self._compressor = self._handle, None, None
        if handle is None:
            return
        try:
            handle.close()
        except OSError:
            if not quietly:
                raise

    def _require_open(self) -> None:
        if not self._open:
            raise ValueError(f"{self.path.name} is already committed or abandoned")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        """Commit on a normal exit (unless done already), abort on an exception."""
        if kind is not None:
            self.abort()
        elif self._open:
            self.commit()


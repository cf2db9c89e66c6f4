"""Which writer a labels output gets: the one place that maps an output type or a file name to a writer, for the
command line, batch and the viewer alike."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .cases import Case
from .dicom.source import DicomSource, read_source_series, require_dicom_extra
from .readers import image_suffix
from .safe_output import atomic_output, write_bytes_checked
from .volume import Geometry
from .writers import write_labels

if TYPE_CHECKING:
    from .dicom.seg import AlgorithmInfo

OUTPUT_SUFFIXES: dict[str, str] = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom-seg": "_seg.dcm",
                                   "dicom-rtstruct": "_rtstruct.dcm"}
"""What ``--output-type`` appends to a case's name; 'same' (the default) keeps the input's file type."""
DICOM_OUTPUTS: tuple[str, ...] = ("dicom-seg", "dicom-rtstruct")


def with_output_type(cases: list[Case], output_type: str) -> list[Case]:
    """``cases`` with their outputs renamed for ``output_type`` ('same' leaves them as they are).

    Raises, before any work, :class:`InputError` for a DICOM output type and a case that is not one DICOM series
    folder, and :class:`TilewiseError` when the ``dicom`` extra is not installed.
    """
    if output_type == "same":
        return cases
    if output_type in DICOM_OUTPUTS:
        for case in cases:
            if len(case.inputs) != 1 or image_suffix(case.inputs[0]) is not None:
                raise InputError(case.inputs[0], f"--output-type {output_type} needs a DICOM input (a DICOM series "
                                                 "folder); this case is a NIfTI, NRRD or MetaImage file")
        require_dicom_extra(output_type)
    suffix = OUTPUT_SUFFIXES[output_type]
    return [replace(case, output=case.output.with_name(case.name + suffix)) for case in cases]


def is_dicom_output(path: Path) -> bool:
    """True when ``path`` is named for a DICOM SEG or RTSTRUCT (see :func:`with_output_type`)."""
    return path.name.endswith(tuple(OUTPUT_SUFFIXES[t] for t in DICOM_OUTPUTS))


def is_dicom_seg_output(path: Path) -> bool:
    """True when ``path`` is written as a DICOM SEG: ``*_seg.dcm`` from the command line, any ``.dcm`` that is not
    an RTSTRUCT name (the viewer's Save as DICOM SEG)."""
    name = path.name.lower()
    return name.endswith(".dcm") and not name.endswith(OUTPUT_SUFFIXES["dicom-rtstruct"])


def check_dicom_references(path: Path, dicom_files: tuple[Path, ...]) -> None:
    """Before any work: raise :class:`InputError` when ``path`` is a DICOM output that the case's source files
    cannot be referenced by (no DICOM input, or a file without the UIDs a SEG/RTSTRUCT copies)."""
    if is_dicom_output(path):
        read_source_series(dicom_files)


def write_output(labels: np.ndarray, geometry: Geometry, dicom_files: tuple[Path, ...],
                 label_names: Mapping[int, str], algorithm: AlgorithmInfo, path: Path,
                 seg_type: str = "binary") -> Path:
    """Write labels at ``path`` in the type its name says, atomically: ``*_rtstruct.dcm`` an RTSTRUCT and any other
    ``.dcm`` a DICOM SEG of ``seg_type`` ('binary' or 'labelmap'), both referencing ``dicom_files``; else an image
    file with ``geometry``. Returns ``path``.

    Every file is checked before it gets its name; a failure raises a
    :class:`~tilewise.engine.errors.TilewiseError` (exit 3: no space, read-only, no permission; exit 2: a path
    that cannot be a file) and leaves nothing under ``path``."""
    if is_dicom_seg_output(path):
        from .dicom.seg import write_dicom_seg

        write_dicom_seg(labels, DicomSource(geometry, dicom_files), dict(label_names), path, algorithm, seg_type)
    elif path.name.lower().endswith(OUTPUT_SUFFIXES["dicom-rtstruct"]):
        from .dicom.rtstruct import write_rtstruct

        write_rtstruct(labels, DicomSource(geometry, dicom_files), dict(label_names), path, algorithm)
    else:
        write_labels(labels, geometry, path)
    return path


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON atomically and checked (read back byte for byte); errors as
    :func:`~.writers.write_labels`."""
    with atomic_output(path) as staging:
        write_bytes_checked(staging, json.dumps(payload, indent=2).encode("utf-8"))

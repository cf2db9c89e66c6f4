"""Writing a label map as a DICOM RT Structure Set (rt-utils): planar contours per label, for radiotherapy systems.

One ROI per label present in the map (an RT structure with no contour helps no planning system), named as in
dataset.json and drawn in the viewer's colour; contours are rt-utils' outlines of each slice's pixels (holes as
inner contours). rt-utils maps pixels to patient coordinates with one pixel spacing for both axes, so a series with
non-square pixels is refused rather than contoured out of place; a multi-frame image has no per-slice instances for
contours to reference and is refused too.

Memory: one label's mask at a time (1 byte per voxel: 75 MB for a 512 x 512 x 300 CT), plus the contours.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..label_colors import label_rgb
from ..safe_output import atomic_output
from ..write_checks import save_dicom_checked
from .conformance import complete_rtstruct
from .seg import AlgorithmInfo, segment_labels
from .source import DicomGrid, match_source, require_dicom_extra


def write_rtstruct(labels: np.ndarray, source: DicomGrid, label_names: Mapping[int, str], path: Path,
                   algorithm: AlgorithmInfo, series_description: str = "Tilewise contours",
                   series_number: int = 1001) -> Path:
    """Write ``labels`` ((z, y, x) on ``source``'s grid) as one RTSTRUCT file at ``path``, atomically and checked
    (read back before it gets its name).

    ``source`` is the DICOM series the labels were computed on (a :class:`Volume` or a
    :class:`~.source.DicomSource`: geometry and ``dicom_files``), ``label_names`` maps label values to names.
    Raises :class:`InputError` when ``source`` is not a single-frame DICOM series with square pixels, the label map
    is not on its grid, or holds a value ``label_names`` lacks; :class:`TilewiseError` when the ``dicom`` extra is
    not installed. Returns ``path``.
    """
    require_dicom_extra("dicom-rtstruct")
    from rt_utils import RTStruct, ds_helper

    series = match_source(labels, source)
    if any(number != 1 for _, number in series.frames) or len(series.datasets) != len(series.frames):
        raise InputError(series.first_file, "RTSTRUCT needs a series of single-frame images; use --output-type "
                                            "dicom-seg for a multi-frame image")
    spacing = [float(s) for s in series.datasets[0].PixelSpacing]
    if not np.isclose(spacing[0], spacing[1], rtol=1e-4):
        raise InputError(series.first_file, f"RTSTRUCT contours need square pixels (this series' pixel spacing is "
                                            f"{spacing}); use --output-type dicom-seg")
    names = dict(segment_labels(label_names))
    present = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in present if v not in names]
    if unknown:
        raise InputError(series.first_file, f"label value(s) {unknown} have no name in the model's labels")
    slices = [series.datasets[index] for index, _ in series.frames]  # label slice k lies on slices[k]
    structure = RTStruct(slices, ds_helper.create_rtstruct_dataset(slices))
    dataset = structure.ds
    dataset.Manufacturer = "Tilewise"
    dataset.ManufacturerModelName = algorithm.model_name[:64]
    dataset.SoftwareVersions = f"Tilewise {algorithm.version}"[:64]
    dataset.StructureSetLabel = "TILEWISE"
    dataset.SeriesDescription = series_description[:64]
    dataset.SeriesNumber = series_number
    del dataset.InstitutionName  # rt-utils writes its own institution's name
    description = ", ".join(f"{key} {value}" for key, value in algorithm.parameters.items())
    for value in present:
        mask = np.moveaxis(labels == value, 0, -1)  # rt-utils takes (rows, columns, slices)
        structure.add_roi(mask=mask, color=list(label_rgb(value)), name=names[value][:64],
                          description=description[:64], roi_generation_algorithm="AUTOMATIC")
    complete_rtstruct(dataset, slices[0])  # what dciodvfy asks for and rt-utils leaves out
    with atomic_output(path) as staging:
        save_dicom_checked(dataset, staging)  # not RTStruct.save: it prints to stdout and appends '.dcm'
    return path

"""Writing a label map as a DICOM Segmentation (highdicom) that references its source series.

One segment per label of the model (background left out; empty labels included, so that segment ``n`` is the same
structure in every case a model segments), numbered in label-value order, each with its dataset.json name, the
viewer's colour and a coded category/type (:mod:`.codes`); the algorithm (model, folds, preset, Tilewise's
version) is recorded on every segment. ``BINARY`` by default (1 bit per pixel, one frame per segment and source
frame, segments numbered from 1, no background segment): every PACS and viewer reads it, and dciodvfy validates it.
``LABELMAP`` (Label Map Segmentation Storage, added to DICOM in 2024: one frame per source frame, 8 bits, 16 beyond
255 labels) on request, where the installed highdicom writes it; many PACS and viewers do not read it yet.

Memory: for a 512 x 512 x 300 CT, the label map in source frame order (a 75 MB uint8 copy only when the frames are
not already in that order) and highdicom's encoded frames, which are the file: a LABELMAP file holds at most 75 MB
(frames with no label are left out), a BINARY one 32 KB per non-empty frame of each segment.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from ...errors import InputError, TilewiseError
from ..label_colors import label_rgb
from ..safe_output import atomic_output
from ..write_checks import save_dicom_checked
from .codes import property_codes
from .source import DicomGrid, match_source, require_dicom_extra


def tilewise_version() -> str:
    """The installed Tilewise distribution's version ('unknown' in a source tree without metadata)."""
    try:
        return metadata.version("tilewise")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class AlgorithmInfo:
    """What made a segmentation, as DICOM records it: the model, its folds, the preset and Tilewise's version."""

    model_name: str
    """E.g. the model's dataset and configuration: 'Dataset004_Hippocampus 3d_fullres'."""
    folds: tuple[str, ...] = ()
    preset: str = ""
    version: str = field(default_factory=tilewise_version)

    @property
    def parameters(self) -> dict[str, str]:
        """Algorithm parameters as DICOM stores them (text key = value pairs)."""
        return {"model": self.model_name, "folds": " ".join(self.folds) or "default", "preset": self.preset or "custom"}


def _lo(text: str) -> str:
    """``text`` cut to the 64 characters of DICOM's LO value representation."""
    return text[:64]


def segment_labels(label_names: Mapping[int, str]) -> list[tuple[int, str]]:
    """(label value, name) of every segment, in segment-number order: the labels above 0 by value."""
    return sorted((int(value), str(name)) for value, name in label_names.items() if int(value) > 0)


def _segment_numbers(labels: np.ndarray, values: list[int]) -> np.ndarray:
    """``labels`` with label value ``values[i]`` as segment number ``i + 1`` (no copy when they are already equal)."""
    if values == list(range(1, len(values) + 1)):
        return labels
    table = np.zeros(int(max(values[-1], labels.max(initial=0))) + 1, np.uint16)
    table[values] = np.arange(1, len(values) + 1)
    return table[labels]


SEG_TYPES: tuple[str, ...] = ("binary", "labelmap")
"""The DICOM SEG types ``--seg-type`` offers; the first is the default."""
DEFAULT_SEG_TYPE = SEG_TYPES[0]


def labelmap_supported() -> bool:
    """True where the installed highdicom writes LABELMAP segmentations (0.23 and newer)."""
    import highdicom

    return hasattr(highdicom.seg.SegmentationTypeValues, "LABELMAP")


def segmentation_type_value(seg_type: str) -> str:
    """DICOM's Segmentation Type for ``seg_type`` ('binary' or 'labelmap', any case): 'BINARY' or 'LABELMAP'.

    Raises :class:`InputError` for another word and :class:`TilewiseError` for 'labelmap' where the installed
    highdicom cannot write it."""
    word = seg_type.lower()
    if word not in SEG_TYPES:
        raise InputError(None, f"unknown DICOM SEG type '{seg_type}'; choose one of: {', '.join(SEG_TYPES)}")
    if word == "labelmap" and not labelmap_supported():
        raise TilewiseError(None, "--seg-type labelmap needs highdicom 0.23 or newer; install it with: "
                                  'pip install -U "highdicom>=0.23", or use --seg-type binary')
    return word.upper()


def write_dicom_seg(labels: np.ndarray, source: DicomGrid, label_names: Mapping[int, str], path: Path,
                    algorithm: AlgorithmInfo, segmentation_type: str = DEFAULT_SEG_TYPE,
                    series_description: str = "Tilewise segmentation", series_number: int = 1000) -> Path:
    """Write ``labels`` ((z, y, x) on ``source``'s grid) as one DICOM SEG file at ``path``, atomically and checked
    (read back before it gets its name).

    ``source`` is the DICOM image the labels were computed on: the :class:`Volume` read from it, or a
    :class:`~.source.DicomSource` (its geometry and ``dicom_files``: a series' files, or one multi-frame
    file). ``label_names`` maps label values to names (``ModelBundle.label_names``; background included or not).
    ``segmentation_type`` is 'binary' (the default) or 'labelmap' (:func:`segmentation_type_value`). Raises :class:`InputError` when ``source`` is
    not DICOM, the label map is not on its grid, or holds a value ``label_names`` lacks; :class:`TilewiseError`
    when the ``dicom`` extra is not installed. Returns ``path``.
    """
    require_dicom_extra("dicom-seg")
    seg_type = segmentation_type_value(segmentation_type)
    import highdicom as hd
    from pydicom.sr.codedict import codes

    series = match_source(labels, source)
    segments = segment_labels(label_names)
    values = [value for value, _ in segments]
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *values})
    if unknown:
        raise InputError(series.first_file, f"label value(s) {unknown} have no name in the model's labels")
    family = hd.AlgorithmIdentificationSequence(
        name=_lo(algorithm.model_name), family=codes.DCM.ArtificialIntelligence, version=_lo(algorithm.version),
        source="Tilewise", parameters=algorithm.parameters)
    descriptions = []
    for number, (value, name) in enumerate(segments, 1):
        category, kind = property_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=_lo(name), segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=family, display_color=hd.color.CIELabColor.from_rgb(*label_rgb(value))))
    pixels, sources = _in_source_order(_segment_numbers(labels, values), series.datasets, series.frames)
    segmentation = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=seg_type, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="Tilewise", manufacturer_model_name=_lo(algorithm.model_name),
        software_versions=_lo(f"Tilewise {algorithm.version}"), device_serial_number="0",
        content_label="TILEWISE", content_description=_lo(f"{algorithm.model_name} ({algorithm.preset})"),
        series_description=_lo(series_description))
    with atomic_output(path) as staging:
        save_dicom_checked(segmentation, staging)
    return path


def _in_source_order(pixels: np.ndarray, datasets: list, frames: list[tuple[int, int]]) -> tuple[np.ndarray, list]:
    """The label slices in the order highdicom pairs them with source frames, and the source images.

    Single-frame images: one slice per dataset, in the datasets' order (only the datasets the labels lie on). A
    multi-frame image: one slice per frame of that one image, in its frame order.
    """
    if len({index for index, _ in frames}) == 1 and len(datasets) == 1:
        image = datasets[0]
        count = int(getattr(image, "NumberOfFrames", 1))
        if len(frames) != count:
            raise InputError(getattr(image, "filename", None),
                             f"the label map has {len(frames)} slices but the multi-frame image {count} frames")
        return _reordered(pixels, np.argsort([number for _, number in frames])), [image]
    if any(number != 1 for _, number in frames):
        raise InputError(getattr(datasets[0], "filename", None),
                         "labels on several multi-frame images are not supported; give one series or one file")
    order = np.argsort([index for index, _ in frames])
    return _reordered(pixels, order), [datasets[frames[k][0]] for k in order]


def _reordered(pixels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``pixels[order]``, without a copy when ``order`` is already 0, 1, 2, ..."""
    return pixels if np.array_equal(order, np.arange(len(order))) else pixels[order]

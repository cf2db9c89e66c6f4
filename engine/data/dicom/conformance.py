"""What makes a DICOM SEG or RTSTRUCT one that every PACS, viewer and validator (dciodvfy) reads.

- The patient and study attributes a derived object copies from its source are Type 2: present, empty when
  unknown. Sources in the wild (and from some PACS) leave some out; :func:`with_type2_attributes` fills the
  in-memory headers with empty values, so highdicom and rt-utils copy every one of them (and neither fails on a
  missing attribute).
- Decimal strings (DS) hold at most 16 characters: :func:`ds_strings` writes coordinates with a tenth of a micrometre
  (rt-utils writes Python's float repr, up to 19 characters, which validators reject).
- The RT Structure Set's own Type 1 and Type 2 attributes rt-utils leaves out (:func:`complete_rtstruct`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

SOURCE_TYPE2: tuple[str, ...] = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Type 2 attributes of the Patient and General Study modules that a SEG or RTSTRUCT copies from its source."""


def with_type2_attributes(dataset: Any) -> Any:
    """``dataset`` (a source image's header) with every attribute of :data:`SOURCE_TYPE2` present (empty when the
    file has none); changed in memory only, returned for convenience."""
    for keyword in SOURCE_TYPE2:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset


def ds_strings(values: Iterable[float]) -> list[str]:
    """``values`` as DICOM decimal strings of at most 16 characters: 4 decimals ('-12.5', '103.2501'), which holds
    any coordinate within 10 km of the origin to 0.1 micrometre."""
    texts = []
    for value in np.asarray(list(values), float).ravel():
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        texts.append("0" if text in ("-0", "") else text)
    return texts


def complete_rtstruct(dataset: Any, source: Any) -> None:
    """Add to an rt-utils RT Structure Set ``dataset`` what a valid one needs and rt-utils leaves out, from the
    ``source`` image's header: the Frame of Reference module, General Study's referring physician and accession
    number, RT Series' operators, the instance number, the source's character set; and rewrite every contour's
    coordinates as valid decimal strings (:func:`ds_strings`)."""
    dataset.SpecificCharacterSet = source.get("SpecificCharacterSet") or dataset.SpecificCharacterSet
    dataset.FrameOfReferenceUID = source.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    dataset.ReferringPhysicianName = source.get("ReferringPhysicianName", "")
    dataset.AccessionNumber = source.get("AccessionNumber", "")
    dataset.StudyID = source.get("StudyID", "")
    dataset.OperatorsName = ""
    dataset.InstanceNumber = 1
    for roi in dataset.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            contour.ContourData = ds_strings(contour.ContourData)

"""Coded segmented-property category and type (SNOMED CT, DICOM CID 7150/7151) for a dataset.json label name.

A small table of common names ('liver', 'kidney_left', 'grey_matter', 'vertebrae_L1', 'tumour', ...): the first
entry one of whose phrases appears among the name's words decides. Any other name gets the generic category
'Tissue' and type 'Anatomical Structure'; the segment's label always carries the dataset.json name itself.
"""
from __future__ import annotations

import re
from typing import Any

# (phrases, category, type): attribute names of pydicom's ``codes.SCT``; more specific phrases first.
_TABLE: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("grey matter", "gray matter", "cortex", "cortical gm"), "Tissue", "GrayMatter"),
    (("white matter",), "Tissue", "WhiteMatter"),
    (("csf", "cerebrospinal fluid"), "BodySubstance", "CerebrospinalFluid"),
    (("inferior vena cava", "ivc"), "AnatomicalStructure", "InferiorVenaCava"),
    (("portal vein",), "AnatomicalStructure", "PortalVein"),
    (("spinal cord",), "AnatomicalStructure", "SpinalCord"),
    (("small bowel", "small intestine"), "AnatomicalStructure", "SmallIntestine"),
    (("adrenal gland", "adrenal"), "AnatomicalStructure", "AdrenalGland"),
    (("brain stem", "brainstem"), "AnatomicalStructure", "BrainStem"),
    (("urinary bladder", "bladder"), "AnatomicalStructure", "Bladder"),
    (("thyroid gland", "thyroid"), "AnatomicalStructure", "Thyroid"),
    (("liver",), "AnatomicalStructure", "Liver"),
    (("spleen",), "AnatomicalStructure", "Spleen"),
    (("kidney", "kidneys"), "AnatomicalStructure", "Kidney"),
    (("lung", "lungs"), "AnatomicalStructure", "Lung"),
    (("heart",), "AnatomicalStructure", "Heart"),
    (("brain",), "AnatomicalStructure", "Brain"),
    (("cerebellum",), "AnatomicalStructure", "Cerebellum"),
    (("hippocampus",), "AnatomicalStructure", "Hippocampus"),
    (("thalamus",), "AnatomicalStructure", "Thalamus"),
    (("putamen",), "AnatomicalStructure", "Putamen"),
    (("amygdala",), "AnatomicalStructure", "Amygdala"),
    (("pancreas",), "AnatomicalStructure", "Pancreas"),
    (("stomach",), "AnatomicalStructure", "Stomach"),
    (("gallbladder",), "AnatomicalStructure", "Gallbladder"),
    (("prostate",), "AnatomicalStructure", "Prostate"),
    (("esophagus", "oesophagus"), "AnatomicalStructure", "Esophagus"),
    (("duodenum",), "AnatomicalStructure", "Duodenum"),
    (("colon",), "AnatomicalStructure", "Colon"),
    (("rectum",), "AnatomicalStructure", "Rectum"),
    (("trachea",), "AnatomicalStructure", "Trachea"),
    (("aorta",), "AnatomicalStructure", "Aorta"),
    (("vertebra", "vertebrae"), "AnatomicalStructure", "Vertebra"),
    (("rib", "ribs"), "AnatomicalStructure", "Rib"),
    (("femur",), "AnatomicalStructure", "Femur"),
    (("humerus",), "AnatomicalStructure", "Humerus"),
    (("scapula",), "AnatomicalStructure", "Scapula"),
    (("clavicle", "clavicula"), "AnatomicalStructure", "Clavicle"),
    (("sternum",), "AnatomicalStructure", "Sternum"),
    (("sacrum",), "AnatomicalStructure", "Sacrum"),
    (("skull",), "AnatomicalStructure", "Skull"),
    (("artery", "arteries"), "AnatomicalStructure", "Artery"),
    (("vein", "veins"), "AnatomicalStructure", "Vein"),
    (("vessel", "vessels", "vasculature"), "AnatomicalStructure", "BloodVessel"),
    (("bone", "bones"), "Tissue", "Bone"),
    (("muscle", "muscles"), "Tissue", "Muscle"),
    (("fat",), "Tissue", "Fat"),
    (("tumor", "tumour", "neoplasm", "cancer", "carcinoma"), "MorphologicallyAbnormalStructure", "Neoplasm"),
    (("edema", "oedema"), "MorphologicallyAbnormalStructure", "Edema"),
    (("necrosis",), "MorphologicallyAbnormalStructure", "Necrosis"),
    (("cyst",), "MorphologicallyAbnormalStructure", "Cyst"),
    (("lesion", "lesions"), "MorphologicallyAbnormalStructure", "Lesion"),
)
GENERIC: tuple[str, str] = ("Tissue", "AnatomicalStructure")
"""Category and type of a name the table does not know."""


def _words(name: str) -> str:
    """' grey matter ' for 'Grey_Matter': lower case, words split at anything but letters and digits, padded."""
    return f" {' '.join(re.split(r'[^a-z0-9]+', name.lower())).strip()} "


def property_names(name: str) -> tuple[str, str]:
    """The ``codes.SCT`` attribute names of the segmented property category and type for label ``name``."""
    words = _words(name)
    for phrases, category, kind in _TABLE:
        if any(f" {phrase} " in words for phrase in phrases):
            return category, kind
    return GENERIC


def property_codes(name: str) -> tuple[Any, Any]:
    """The segmented property category and type of label ``name`` as pydicom ``Code`` objects."""
    from pydicom.sr.codedict import codes

    category, kind = property_names(name)
    return getattr(codes.SCT, category), getattr(codes.SCT, kind)

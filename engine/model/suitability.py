"""Is this image right for this model? The image held against what the model was trained on, before a run.

What is compared (each mismatch is one :class:`Finding`, a plain sentence for a radiologist):

- modality: the DICOM ``Modality`` when the image came from DICOM, else its intensities: a CT in Hounsfield units has
  air near -1000, so a CT model (``CTNormalization``, or a channel named CT) given an image with no value below
  -500 is probably not given a CT, and an MR model given an image with many values below -500 probably is;
- intensity range: for channels normalised with fixed values (CT), the image's 0.5-99.5 percentiles against the
  training foreground's (``foreground_intensity_properties_per_channel`` in plans.json); z-score normalised
  channels (MR) are scaled per image, so their absolute range is not compared;
- voxel spacing: more than :data:`SPACING_FACTOR` times finer or coarser than the training spacing on any axis;
- NaN or infinite voxels.

Findings are warnings; :class:`InputPolicy` says whether a command refuses them instead (``--strict-input``) and
where warnings go. Nothing here needs the model's weights: the viewer can ask before the model loads.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPACING_FACTOR = 3.0
"""A voxel spacing this many times finer or coarser than the training spacing on any axis is a finding."""
HU_AIR = -500.0
"""Below this a voxel is air or lung in Hounsfield units; MR and PET images have no such values."""
HU_SHARE = 0.01
"""An image with at least this share of voxels below :data:`HU_AIR` looks like a CT."""
SAMPLE_VOXELS = 2_000_000
"""Percentiles are taken on an even sample of at most this many voxels (fast on whole-body CTs)."""
_MR_NAMES = re.compile(r"(^|[^a-z])(t1|t2|t1ce|t1c|t1gd|flair|mr|mri|adc|dwi|pd|swi|dixon|bold)([^a-z]|$)|t1|t2")
_CT_NAMES = re.compile(r"(^|[^a-z])(ct|cect|ncct|cta|hu)([^a-z]|$)")
_PET_NAMES = re.compile(r"(^|[^a-z])(pet|suv)([^a-z]|$)")
_BODY_PARTS = ("brain", "head", "neck", "lung", "chest", "thorax", "heart", "cardiac", "liver", "pancreas", "kidney",
               "spleen", "abdomen", "pelvis", "prostate", "spine", "knee", "hip", "breast", "colon", "bladder")
_MODALITY_WORDS = {"CT": "CT", "MR": "MR", "PT": "PET", "PET": "PET", "NM": "nuclear medicine", "US": "ultrasound",
                   "CR": "radiograph", "DX": "radiograph", "MG": "mammogram", "XA": "angiogram"}


@dataclass(frozen=True)
class Finding:
    """One way the image differs from the model's training data: ``kind`` (modality, intensity, spacing,
    non_finite) and a plain sentence."""

    kind: str
    message: str


@dataclass(frozen=True)
class InputPolicy:
    """What a run does with findings: ``strict`` refuses the image (exit 2); otherwise each finding goes to
    ``warn(source, message)`` when set, else into the run's notes."""

    strict: bool = False
    warn: Callable[[str, str], None] | None = None


_policy = InputPolicy()


def input_policy() -> InputPolicy:
    """The policy runs in this process follow (set by the command line; the default warns through notes)."""
    return _policy


def set_input_policy(policy: InputPolicy) -> InputPolicy:
    """Make ``policy`` the one runs in this process follow; returns the previous one."""
    global _policy
    previous, _policy = _policy, policy
    return previous


# ---- what the model was trained on ------------------------------------------------------------------------------
def _channel_modality(name: str, scheme: str, properties: dict[str, Any] | None) -> str | None:
    """'CT', 'MR', 'PET' or None (unknown) for one input channel of the model."""
    lowered = name.casefold()
    if scheme == "CTNormalization" or _CT_NAMES.search(lowered):
        return "CT"
    if _PET_NAMES.search(lowered):
        return "PET"
    if _MR_NAMES.search(lowered):
        return "MR"
    if scheme == "ZScoreNormalization" and properties and float(properties.get("min", -1.0)) >= 0.0:
        return "MR"  # z-score with no negative training value: not HU
    return None


def _body_part(dataset_json: dict[str, Any], plans: dict[str, Any]) -> str:
    text = " ".join(str(dataset_json.get(k, "")) for k in ("name", "description")) + " " + str(
        plans.get("dataset_name", ""))
    words = re.findall(r"[a-z]+", text.casefold())
    return next((part for part in _BODY_PARTS if part in words), "")


def _trained_on(modality: str, body_part: str) -> str:
    return f"This model was trained on {body_part + ' ' if body_part else ''}{modality}"


# ---- what the image is ------------------------------------------------------------------------------------------
def dicom_modality(dicom_files: tuple[Path, ...] | list[Path]) -> str | None:
    """The DICOM ``Modality`` of the first file (None without DICOM files or when it cannot be read)."""
    if not dicom_files:
        return None
    try:
        import pydicom

        header = pydicom.dcmread(dicom_files[0], stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001 - an unreadable header only means the modality is unknown
        return None
    value = str(header.get("Modality", "")).strip().upper()
    return value or None


def _sample(channel: np.ndarray) -> np.ndarray:
    """The finite voxels of an even sample of ``channel`` (at most :data:`SAMPLE_VOXELS`), as float64."""
    flat = channel.reshape(-1)
    step = max(1, flat.size // SAMPLE_VOXELS)
    values = flat[::step].astype(np.float64)
    return values[np.isfinite(values)]


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3g}"


def _spacing_text(spacing: list[float]) -> str:
    return " x ".join(f"{s:.3g}" for s in reversed(spacing)) + " mm"


# ---- the comparison ---------------------------------------------------------------------------------------------
def assess(array: np.ndarray, spacing_zyx: list[float], plans: dict[str, Any], dataset_json: dict[str, Any],
           configuration: str, modality: str | None = None) -> list[Finding]:
    """Findings for an image (``array`` as (channels, z, y, x), its voxel spacing in z, y, x, its DICOM
    ``modality`` when known) given to the model of ``plans``/``dataset_json`` in ``configuration``."""
    findings: list[Finding] = []
    non_finite = int(array.size - np.count_nonzero(np.isfinite(array)))
    if non_finite:
        share = "every voxel" if non_finite == array.size else f"{non_finite:,} voxels"
        findings.append(Finding("non_finite", f"{share} of this image {'is' if non_finite == array.size else 'are'} "
                                              "not a number (NaN) or infinite; the image is damaged or was "
                                              "exported wrongly"))
    configurations = plans.get("configurations") or {}
    settings = _resolved(configurations, configuration)
    findings += _modality_and_intensity(array, plans, dataset_json, settings, modality)
    spacing = _spacing_finding(spacing_zyx, plans, settings)
    if spacing is not None:
        findings.append(spacing)
    return findings


def _resolved(configurations: dict[str, Any], name: str) -> dict[str, Any]:
    chain, resolved = [], {}
    while isinstance(configurations.get(name), dict) and name not in chain:
        chain.append(name)
        name = configurations[name].get("inherits_from")
    for link in reversed(chain):
        resolved.update(configurations[link])
    return resolved


def _modality_and_intensity(array: np.ndarray, plans: dict[str, Any], dataset_json: dict[str, Any],
                            settings: dict[str, Any], modality: str | None) -> list[Finding]:
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    names = [str(channels[k]) for k in sorted(channels, key=int)]
    schemes = list(settings.get("normalization_schemes") or [])
    properties = plans.get("foreground_intensity_properties_per_channel") or {}
    body = _body_part(dataset_json, plans)
    findings: list[Finding] = []
    for index in range(min(len(names), array.shape[0])):
        scheme = schemes[index] if index < len(schemes) else ""
        trained = _channel_modality(names[index], scheme, properties.get(str(index)))
        values = _sample(array[index])
        if values.size == 0:
            continue  # all NaN: said above
        prefix = f"Channel {index} ({names[index]}): " if len(names) > 1 else ""
        finding = _modality_finding(trained, body, values, modality)
        if finding is None and scheme == "CTNormalization" and str(index) in properties:
            finding = _intensity_finding(values, properties[str(index)])
        if finding is not None:
            findings.append(Finding(finding.kind, prefix + finding.message))
    return findings


def _modality_finding(trained: str | None, body: str, values: np.ndarray, modality: str | None) -> Finding | None:
    if trained is None:
        return None
    said = _MODALITY_WORDS.get(modality or "", modality)
    if modality is not None and said != trained and modality not in ("OT", "SC"):
        return Finding("modality", f"{_trained_on(trained, body)}; this image is {said} (its DICOM Modality is "
                                   f"{modality})")
    if modality is not None:
        return None
    below_air = float(np.count_nonzero(values < HU_AIR)) / values.size
    if trained == "CT" and not np.any(values < HU_AIR):
        return Finding("modality", f"{_trained_on('CT', body)}; this image has no value below -500, so it does not "
                                   "look like a CT in Hounsfield units (air is -1000); it may be MR or a rescaled CT")
    if trained in ("MR", "PET") and below_air >= HU_SHARE:
        return Finding("modality", f"{_trained_on(trained, body)}; this image looks like CT (values down to "
                                   f"{_number(float(values.min()))}, as in Hounsfield units)")
    return None


def _intensity_finding(values: np.ndarray, properties: dict[str, Any]) -> Finding | None:
    try:
        low, high = float(properties["percentile_00_5"]), float(properties["percentile_99_5"])
    except (KeyError, TypeError, ValueError):
        return None
    image_low, image_high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if image_high < low or image_low > high:
        return Finding("intensity", f"its intensities ({_number(image_low)} to {_number(image_high)}) lie outside "
                                    f"the range the model was trained on ({_number(low)} to {_number(high)})")
    return None


def _spacing_finding(spacing_zyx: list[float], plans: dict[str, Any], settings: dict[str, Any]) -> Finding | None:
    trained = [float(s) for s in settings.get("spacing") or []]
    if not trained or len(spacing_zyx) != 3:
        return None
    order = list(plans.get("transpose_forward") or [0, 1, 2])
    in_image_order: list[float | None] = [None, None, None]
    for position, axis in enumerate(order[3 - len(trained):]):  # a 2d configuration's two in-plane axes
        in_image_order[axis] = trained[position]
    off = [(float(s), t) for s, t in zip(spacing_zyx, in_image_order)
           if t is not None and s > 0 and max(s / t, t / s) > SPACING_FACTOR]
    if not off:
        return None
    shown = [t if t is not None else s for s, t in zip(spacing_zyx, in_image_order)]
    return Finding("spacing", f"its voxels are {_spacing_text([float(s) for s in spacing_zyx])}; the model was "
                              f"trained on {_spacing_text(shown)} voxels, more than {SPACING_FACTOR:.0f} times "
                              "finer or coarser on at least one axis, so results may be poor")


# ---- for callers with a volume and a model ----------------------------------------------------------------------
def check_image(volume: Any, model: Any) -> list[Finding]:
    """Findings for ``volume`` (a :class:`~tilewise.engine.Volume`) and ``model`` (a loaded
    :class:`~tilewise.engine.ModelBundle`, or a model folder: then only its JSON files are read, and the
    configuration is 3d_fullres when planned, else the first). The viewer calls this before Run."""
    if hasattr(model, "plans"):
        plans, dataset_json, configuration = model.plans, model.dataset_json, model.configuration_name
    else:
        from .bundle import check_model_folder, read_json

        folder = check_model_folder(model)
        plans, dataset_json = read_json(folder / "plans.json"), read_json(folder / "dataset.json")
        names = list(plans.get("configurations") or {})
        configuration = "3d_fullres" if "3d_fullres" in names else (names[0] if names else "")
    modality = dicom_modality(tuple(volume.dicom_files))
    return assess(volume.array, list(volume.nnunet_spacing), plans, dataset_json, configuration, modality)


def apply_policy(findings: list[Finding], source: str) -> list[str]:
    """What :func:`input_policy` says to do with ``findings`` for the image ``source``: raise
    :class:`~tilewise.engine.InputError` (one line, every finding) when strict; else warn through the policy's
    ``warn`` and return nothing, or return the sentences as notes for the run's result."""
    from ..errors import InputError

    if not findings:
        return []
    policy = input_policy()
    if policy.strict:
        said = "; ".join(finding.message for finding in findings)
        raise InputError(source, f"{said} (refused because of --strict-input)")
    if policy.warn is not None:
        for finding in findings:
            policy.warn(source, finding.message)
        return []
    return [finding.message for finding in findings]

"""Turning a command line's input (file, nnU-Net folder or DICOM folder) into cases with output paths."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .io import find_cases, image_suffix, is_dicom_folder, strip_suffix

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


@dataclass(frozen=True)
class Case:
    """One image to segment: its channel files (or DICOM folder) and where its labels go."""

    name: str
    inputs: tuple[Path, ...]
    output: Path

    @property
    def output_truncated(self) -> Path:
        """Output path without its image suffix (nnU-Net's naming for .npz/.pkl probability files)."""
        return self.output.with_name(self.name)


def planned_outputs(cases: list[Case], with_probabilities: bool, report: Path | None = None) -> list[Path]:
    """Every file a run over ``cases`` will write: labels, nnU-Net's .npz/.pkl when asked, and the report."""
    outputs = [case.output for case in cases]
    if with_probabilities:
        outputs += [case.output_truncated.with_name(f"{case.name}{ext}") for case in cases for ext in (".npz", ".pkl")]
    return outputs + ([report] if report is not None else [])


def collect_cases(source: Path, output_dir: Path, num_channels: int, explicit: list[Path] | None = None) -> list[Case]:
    """Cases for ``source``: one image file, a DICOM series folder, or a folder of nnU-Net-named cases.

    ``explicit`` lists the channel files of a single case and takes precedence. Outputs keep the input's file type
    (DICOM input becomes NIfTI).
    """
    if explicit:
        first = explicit[0]
        name = _CHANNEL_SUFFIX.sub("", strip_suffix(first))
        return [Case(name, tuple(explicit), output_dir / f"{name}{image_suffix(first) or '.nii.gz'}")]
    if not source.exists():
        raise InputError(source, "input not found")
    if source.is_file():
        if image_suffix(source) is None:
            raise InputError(source, "unsupported file type (expected .nii.gz, .nii, .nrrd, .mha, .mhd or a DICOM folder)")
        name = _CHANNEL_SUFFIX.sub("", strip_suffix(source))
        if num_channels > 1:
            grouped = find_cases(source.parent, num_channels).get(name)
            if grouped is None or source not in grouped:
                raise InputError(source, f"the model needs {num_channels} channels; give the folder or every "
                                         f"{name}_XXXX file")
            return [Case(name, tuple(grouped), output_dir / f"{name}{image_suffix(source)}")]
        return [Case(name, (source,), output_dir / f"{name}{image_suffix(source)}")]
    has_images = any(p.is_file() and image_suffix(p) for p in source.iterdir())
    if not has_images and is_dicom_folder(source):
        return [Case(source.name, (source,), output_dir / f"{source.name}.nii.gz")]
    cases = find_cases(source, num_channels)
    return [Case(name, tuple(files), output_dir / f"{name}{image_suffix(files[0])}") for name, files in cases.items()]

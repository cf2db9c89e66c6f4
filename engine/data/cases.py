"""Turning a command line's input (file, nnU-Net folder or DICOM folder) into cases with output paths."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .readers import image_suffix, is_dicom_folder, strip_suffix

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
_CHANNEL_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def find_cases(folder: Path, num_channels: int) -> dict[str, list[Path]]:
    """Group an nnU-Net input folder into cases: ``{case_id: [case_0000.ext, case_0001.ext, ...]}``.

    Files that do not follow nnU-Net's ``_XXXX`` channel naming are taken as single-channel cases when the model
    has one channel. Raises :class:`InputError` for a case with missing channels.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and image_suffix(p) is not None and not p.name.startswith("."))
    cases: dict[str, dict[int, Path]] = {}
    for file in files:
        match = _CHANNEL_NAME.match(strip_suffix(file))
        if match:
            cases.setdefault(match["case"], {})[int(match["channel"])] = file
        elif num_channels == 1:
            cases.setdefault(strip_suffix(file), {})[0] = file
    result: dict[str, list[Path]] = {}
    for case, channel_files in sorted(cases.items()):
        missing = [c for c in range(num_channels) if c not in channel_files]
        if missing:
            first = next(iter(channel_files.values()))
            names = ", ".join(f"{case}_{c:04d}" for c in missing)
            raise InputError(first, f"case '{case}' lacks channel file(s) {names}; the model needs {num_channels} channel(s)")
        result[case] = [channel_files[c] for c in range(num_channels)]
    if not result:
        raise InputError(folder, "no input images found (expected files such as case_0000.nii.gz)")
    return result


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

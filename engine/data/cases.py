"""Turning a command line's input (file, nnU-Net folder, DICOM folder, file or zip) into cases with output paths."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .readers import image_suffix, is_dicom_folder, is_dicom_input, strip_suffix

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
_CHANNEL_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ChannelGroup:
    """One case of an nnU-Net input folder: its channel files by channel number, as named (``case_XXXX``)."""

    name: str
    files: dict[int, Path]

    @property
    def inputs(self) -> tuple[Path, ...]:
        """Every file of the case, by channel number."""
        return tuple(self.files[c] for c in sorted(self.files))

    def missing(self, num_channels: int) -> list[int]:
        """The channels a model with ``num_channels`` inputs needs that have no file."""
        return [c for c in range(num_channels) if c not in self.files]

    def problem(self, num_channels: int) -> str | None:
        """Why the case cannot run with a ``num_channels``-input model (a channel file missing or one too many), or
        None when it can."""
        missing = self.missing(num_channels)
        if missing:
            names = ", ".join(f"{self.name}_{c:04d}" for c in missing)
            return f"lacks channel file(s) {names}; the model needs {num_channels} channel(s)"
        extra = sorted(c for c in self.files if c >= num_channels)
        if extra:
            names = ", ".join(f"{self.name}_{c:04d}" for c in extra)
            return f"has channel file(s) {names} beyond the model's {num_channels} channel(s)"
        return None


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` (any supported format, hidden ones left out), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.is_file() and image_suffix(p) is not None)


def group_channel_files(files: list[Path], num_channels: int) -> list[ChannelGroup]:
    """``files`` grouped into cases by nnU-Net's ``_XXXX`` channel naming, sorted by case name.

    Files that do not follow it are taken as single-channel cases when the model has one channel (and left out
    otherwise). A group may lack channels or have too many: see :meth:`ChannelGroup.problem`.
    """
    cases: dict[str, dict[int, Path]] = {}
    for file in files:
        match = _CHANNEL_NAME.match(strip_suffix(file))
        if match:
            cases.setdefault(match["case"], {})[int(match["channel"])] = file
        elif num_channels == 1:
            cases.setdefault(strip_suffix(file), {})[0] = file
    return [ChannelGroup(name, cases[name]) for name in sorted(cases)]


def find_cases(folder: Path, num_channels: int) -> dict[str, list[Path]]:
    """Group an nnU-Net input folder into cases: ``{case_id: [case_0000.ext, case_0001.ext, ...]}``.

    Files that do not follow nnU-Net's ``_XXXX`` channel naming are taken as single-channel cases when the model
    has one channel; channels beyond the model's are left out, as nnU-Net does. Raises :class:`InputError` for a
    case with missing channels.
    """
    result: dict[str, list[Path]] = {}
    for group in group_channel_files(image_files(folder), num_channels):
        if group.missing(num_channels):
            raise InputError(group.inputs[0], f"case '{group.name}' {group.problem(num_channels)}")
        result[group.name] = [group.files[c] for c in range(num_channels)]
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
    """Cases for ``source``: one image file, a DICOM input (a folder holding DICOM files at any depth and no image
    files, a ``.zip`` of one, a DICOM file), or a folder of nnU-Net-named cases.

    ``explicit`` lists the channel files of a single case and takes precedence. Outputs keep the input's file type;
    DICOM input becomes NIfTI named after the folder, zip or file ('case.zip' -> 'case.nii.gz').
    """
    if explicit:
        first = explicit[0]
        name = _CHANNEL_SUFFIX.sub("", strip_suffix(first))
        return [Case(name, tuple(explicit), output_dir / f"{name}{image_suffix(first) or '.nii.gz'}")]
    if not source.exists():
        raise InputError(source, "input not found")
    if source.is_file():
        if image_suffix(source) is None:
            if not is_dicom_input(source):
                raise InputError(source, "unsupported file type (expected .nii.gz, .nii, .nrrd, .mha, .mhd, a DICOM "
                                         "folder, file or .zip)")
            return [Case(strip_suffix(source), (source,), output_dir / f"{strip_suffix(source)}.nii.gz")]
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

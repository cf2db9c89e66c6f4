"""The cases of a batch: nnU-Net-named files and DICOM series sub-folders, nnU-Net's sharding, what is finished.

Unlike ``tilewise predict``, a batch does not stop at a case that lacks a channel file: that case becomes a
:class:`BatchCase` with a ``problem``, recorded as failed in the summary while the other cases run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..data.cases import Case
from ..data.readers import image_suffix, is_dicom_folder, strip_suffix
from ..errors import InputError

_CHANNEL_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class BatchCase:
    """One case of a batch: a :class:`Case` (inputs and output path), or a reason it cannot run."""

    case: Case
    problem: str | None = None

    @property
    def name(self) -> str:
        """The case identifier (nnU-Net's name without the channel suffix, or the DICOM folder's name)."""
        return self.case.name


def case_outputs(case: Case, with_probabilities: bool) -> list[Path]:
    """Every file a case's run writes: the labels, and nnU-Net's .npz and .pkl when probabilities are saved."""
    outputs = [case.output]
    if with_probabilities:
        outputs += [case.output_truncated.with_name(case.name + ext) for ext in (".npz", ".pkl")]
    return outputs


def is_finished(case: Case, with_probabilities: bool) -> bool:
    """Whether every output of ``case`` exists (outputs are written atomically: one that exists is complete)."""
    return all(path.is_file() for path in case_outputs(case, with_probabilities))


def _group_files(files: list[Path], num_channels: int) -> dict[str, dict[int, Path]]:
    """Files by case and channel, as :func:`~tilewise.engine.data.cases.find_cases` groups them."""
    cases: dict[str, dict[int, Path]] = {}
    for file in files:
        match = _CHANNEL_NAME.match(strip_suffix(file))
        if match:
            cases.setdefault(match["case"], {})[int(match["channel"])] = file
        elif num_channels == 1:
            cases.setdefault(strip_suffix(file), {})[0] = file
    return cases


def _file_case(name: str, channel_files: dict[int, Path], num_channels: int, output_dir: Path) -> BatchCase:
    first = channel_files[min(channel_files)]
    missing = [c for c in range(num_channels) if c not in channel_files]
    inputs = tuple(channel_files[c] for c in sorted(channel_files))
    case = Case(name, inputs, output_dir / f"{name}{image_suffix(first)}")
    if missing:
        names = ", ".join(f"{name}_{c:04d}" for c in missing)
        return BatchCase(case, f"lacks channel file(s) {names}; the model needs {num_channels} channel(s)")
    extra = sorted(c for c in channel_files if c >= num_channels)
    if extra:
        names = ", ".join(f"{name}_{c:04d}" for c in extra)
        return BatchCase(case, f"has channel file(s) {names} beyond the model's {num_channels} channel(s)")
    return BatchCase(case)


def collect_batch_cases(input_dir: Path, output_dir: Path, num_channels: int) -> list[BatchCase]:
    """Every case in ``input_dir``, sorted by name: nnU-Net-named image files (``case_0000.nii.gz``, ...; any
    supported format) and one case per sub-folder holding a DICOM series (its labels: ``<folder>.nii.gz``).

    Raises :class:`InputError` when ``input_dir`` is not a folder or holds no case at all.
    """
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found" if not input_dir.exists() else
                         "is a file; 'tilewise batch' takes a folder (use 'tilewise predict' for one image)")
    entries = sorted(p for p in input_dir.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and image_suffix(p) is not None]
    cases = {name: _file_case(name, channels, num_channels, output_dir)
             for name, channels in _group_files(files, num_channels).items()}
    for folder in (p for p in entries if p.is_dir() and is_dicom_folder(p)):
        if folder.name in cases:
            raise InputError(folder, f"case '{folder.name}' is both image files and a DICOM folder; rename one")
        problem = None if num_channels == 1 else f"is one DICOM series but the model needs {num_channels} channels"
        cases[folder.name] = BatchCase(Case(folder.name, (folder,), output_dir / f"{folder.name}.nii.gz"), problem)
    if not cases:
        raise InputError(input_dir, "no cases found (expected files such as case_0000.nii.gz, or one sub-folder per "
                                    "DICOM series)")
    return [cases[name] for name in sorted(cases)]


def shard(cases: list[BatchCase], num_parts: int, part_id: int) -> list[BatchCase]:
    """Part ``part_id`` of ``num_parts`` as nnU-Net splits its sorted case list (``cases[part_id::num_parts]``)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError("-part_id", f"must be between 0 and num_parts - 1 = {num_parts - 1} (got {part_id})")
    return cases[part_id::num_parts]

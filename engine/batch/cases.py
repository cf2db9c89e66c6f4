"""The cases of a batch: nnU-Net-named files and DICOM series sub-folders, nnU-Net's sharding, what is finished.

Unlike ``tilewise predict``, a batch does not stop at a case that lacks a channel file: that case becomes a
:class:`BatchCase` with a ``problem``, recorded as failed in the summary while the other cases run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.cases import Case, ChannelGroup, group_channel_files, image_files
from ..data.dicom.zips import is_zip
from ..data.readers import image_suffix, is_dicom_folder
from ..data.uncertainty_file import uncertainty_paths
from ..errors import InputError


@dataclass(frozen=True)
class BatchCase:
    """One case of a batch: a :class:`Case` (inputs and output path), or a reason it cannot run."""

    case: Case
    problem: str | None = None

    @property
    def name(self) -> str:
        """The case identifier (nnU-Net's name without the channel suffix, or the DICOM folder's name)."""
        return self.case.name


def case_outputs(case: Case, with_probabilities: bool, with_uncertainty: bool = False) -> list[Path]:
    """Every file a case's run writes: the labels, nnU-Net's .npz and .pkl when probabilities are saved, and the
    uncertainty map when it is."""
    outputs = [case.output]
    if with_probabilities:
        outputs += [case.output_truncated.with_name(case.name + ext) for ext in (".npz", ".pkl")]
    return outputs + uncertainty_paths([case], with_uncertainty)


def _file_case(group: ChannelGroup, num_channels: int, output_dir: Path) -> BatchCase:
    case = Case(group.name, group.inputs, output_dir / f"{group.name}{image_suffix(group.inputs[0])}")
    return BatchCase(case, group.problem(num_channels))


def collect_batch_cases(input_dir: Path, output_dir: Path, num_channels: int) -> list[BatchCase]:
    """Every case in ``input_dir``, sorted by name: nnU-Net-named image files (``case_0000.nii.gz``, ...; any
    supported format) and one case per sub-folder holding a DICOM series or zip of one (its labels:
    ``<folder>.nii.gz``, ``<zip name>.nii.gz``).

    Raises :class:`InputError` when ``input_dir`` is not a folder or holds no case at all.
    """
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found" if not input_dir.exists() else
                         "is a file; 'tilewise batch' takes a folder (use 'tilewise predict' for one image)")
    cases = {group.name: _file_case(group, num_channels, output_dir)
             for group in group_channel_files(image_files(input_dir), num_channels)}
    entries = sorted(p for p in input_dir.iterdir() if not p.name.startswith("."))
    series = [(p.name, p) for p in entries if p.is_dir() and is_dicom_folder(p)]
    series += [(p.name[:-4], p) for p in entries if is_zip(p)]
    for name, source in series:
        if name in cases:
            raise InputError(source, f"case '{name}' is also another input (image files, a DICOM folder or a zip); "
                                     "rename one")
        problem = None if num_channels == 1 else f"is one DICOM series but the model needs {num_channels} channels"
        cases[name] = BatchCase(Case(name, (source,), output_dir / f"{name}.nii.gz"), problem)
    if not cases:
        raise InputError(input_dir, "no cases found (expected files such as case_0000.nii.gz, or one sub-folder or "
                                    "zip per DICOM series)")
    return [cases[name] for name in sorted(cases)]


def shard(cases: list[BatchCase], num_parts: int, part_id: int) -> list[BatchCase]:
    """Part ``part_id`` of ``num_parts`` as nnU-Net splits its sorted case list (``cases[part_id::num_parts]``)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError("-part_id", f"must be between 0 and num_parts - 1 = {num_parts - 1} (got {part_id})")
    return cases[part_id::num_parts]

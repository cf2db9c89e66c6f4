"""From DICOMweb addresses to case folders: what each address names as cases, and pulling them.

A series is one case, named by its Series Instance UID; a study is one case named by its Study Instance UID, with
each of its image series in a sub-folder (the largest is segmented, or the one ``--series-uid`` names, as for any
DICOM folder). A search gives one case per series (``.../series?...``) or per study (``.../studies?...``) found.
Series that hold no image volume (SEG, SR, RTSTRUCT, ...) are left out, so results stored earlier are not segmented
again.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import NON_IMAGE_MODALITIES, PacsServer, SeriesRef


@dataclass(frozen=True)
class RemoteCase:
    """One case on a DICOMweb server: its name (a UID), its series, and whether it is a whole study."""

    name: str
    server: PacsServer
    series: tuple[SeriesRef, ...]
    study: bool = False


def _images(refs: Sequence[SeriesRef]) -> tuple[SeriesRef, ...]:
    return tuple(ref for ref in refs if ref.modality.upper() not in NON_IMAGE_MODALITIES)


def _study_case(server: PacsServer, study_uid: str) -> RemoteCase:
    return RemoteCase(study_uid, server, _images(server.find_series(study_uid)), study=True)


def remote_cases(server: PacsServer, location: Any = None) -> list[RemoteCase]:
    """The cases ``location`` (default: the server's own address) names on ``server``; QIDO-RS searches run here.

    ``location`` is a parsed DICOMweb or DIMSE address. Raises :class:`InputError` when a study holds no image
    series, and :class:`~.common.PacsError` when the server cannot be asked."""
    where = location or server.location
    if where.series_uid:
        assert where.study_uid is not None
        return [RemoteCase(where.series_uid, server, (SeriesRef(where.study_uid, where.series_uid),))]
    if where.study_uid and where.search is None:
        cases = [_study_case(server, where.study_uid)]
    elif where.search == "series":
        return [RemoteCase(ref.series_uid, server, (ref,))
                for ref in _images(server.find_series(where.study_uid, where.filters))]
    elif where.search == "studies":
        cases = [_study_case(server, uid) for uid in server.find_studies(where.filters)]
    else:
        raise InputError(where.describe(), "names no study or series to read (add /studies/UID[/series/UID] or a "
                                           "search such as /series?Modality=CT)")
    empty = next((case for case in cases if not case.series), None)
    if empty is not None:
        raise InputError(where.describe(), f"study {empty.name} holds no image series to segment")
    return cases


def pull(cases: Sequence[RemoteCase], root: Path, report: Callable[[str], None] | None = None) -> list[Path]:
    """Pull every case into a folder of its name under ``root`` (a study's series each in a sub-folder named by its
    UID); returns the case folders. ``report`` hears one line per series: its UID, files, size and time."""
    folders = []
    for case in cases:
        folder = root / case.name
        for ref in case.series:
            started = time.perf_counter()
            count, size = case.server.pull_series(ref.study_uid, ref.series_uid,
                                                  folder / ref.series_uid if case.study else folder)
            if report is not None:
                report(f"pulled series {ref.series_uid} ({count} files, {size / 2**20:.1f} MiB) from "
                       f"{case.server.name} in {time.perf_counter() - started:.1f}s")
        folders.append(folder)
    return folders

"""Sealing: a complete incoming series becomes a version that the node segments once.

A series is complete when no instance of it arrived for the settle time and no delivery of it is open or cut
(:meth:`~.spool.Spool.arrivals`). Sealing moves its incoming folder, in one rename, into a private folder beside
its versions, so that an instance arriving later starts a new incoming folder (and later a new version), never
mixes into a version being segmented. The rule for instances that arrive after a series was sealed:

- the new version holds the instances of the version before it plus the new ones (an instance sent again, same
  SOP Instance UID, replaces the earlier file), and is segmented as a whole: the series was incomplete or changed;
- when every instance that arrived is byte for byte one the version before holds (a PACS sent the series again),
  the version is recorded as a ``duplicate`` of it and not segmented again;
- the version before, when nobody has started it or its SEG is written but not sent, is ``superseded``: only the
  new, fuller version is segmented and sent (see :func:`supersede_previous`).

Every step is a rename or is repeated whole after a crash: :func:`recover` finishes the seals of dead processes.
"""
from __future__ import annotations

import errno
import filecmp
import os
import shutil
import uuid
from pathlib import Path

from ..batch.claims import HOST, Claims
from .spool import (
    ABORTED_MARK,
    DUPLICATE,
    OPEN_MARK,
    QUEUED,
    SUPERSEDED,
    WRITTEN,
    Spool,
    VersionRef,
    now_iso,
    owned_name,
    owner_gone,
    write_json_atomic,
)

SEAL_PREFIX = ".seal"


def seal(spool: Spool, series: str) -> VersionRef | None:
    """Seal the incoming ``series`` (found complete by :meth:`Spool.arrivals`) into its next version; None when it
    changed meanwhile (a delivery opened, another process sealed it)."""
    parent = spool.series / series
    parent.mkdir(mode=0o700, exist_ok=True)
    work = parent / owned_name(SEAL_PREFIX, uuid.uuid4().hex[:12])
    work.mkdir(mode=0o700)
    with spool.lock:  # an association may have opened since the series was found complete
        try:
            names = os.listdir(spool.incoming / series)
            if any(name.startswith(OPEN_MARK) or name == ABORTED_MARK for name in names):
                raise FileNotFoundError
            os.rename(spool.incoming / series, work / "instances")
        except FileNotFoundError:
            work.rmdir()
            return None
    return finish_seal(spool, work)


def finish_seal(spool: Spool, work: Path) -> VersionRef | None:
    """Merge, record and number the version being sealed in ``work`` (repeatable after a crash at any step)."""
    series, instances = work.parent.name, work / "instances"
    if not instances.is_dir():
        shutil.rmtree(work, ignore_errors=True)
        return None
    for name in os.listdir(instances):
        if name.startswith("."):  # delivery markers, left at the rename
            (instances / name).unlink(missing_ok=True)
    versions = spool.versions(series)
    previous = next((ref for ref in reversed(versions) if ref.instances.is_dir()), None)
    duplicate_of = _merge(previous, instances)
    count = sum(1 for name in os.listdir(instances) if name.endswith(".dcm"))
    state = {"state": DUPLICATE if duplicate_of is not None else QUEUED, "series": series, "instances": count,
             "sealed": now_iso()}
    if duplicate_of is not None:
        state["duplicate_of"] = duplicate_of
    write_json_atomic(work / "state.json", state)
    number = (versions[-1].number if versions else 0) + 1
    while True:
        try:
            os.rename(work, spool.series / series / f"v{number}")
            break
        except OSError as error:  # another process took this number
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            number += 1
    ref = VersionRef(series, number, spool.series / series / f"v{number}")
    if duplicate_of is not None:
        spool.journal.record(DUPLICATE, series, f"series {series}: {count} instance(s) received again, the same as "
                             f"version {duplicate_of}; not segmented again", version=number, of=duplicate_of)
    else:
        merged = f" (with version {previous.number}'s)" if previous is not None else ""
        spool.journal.record("sealed", series, f"series {series}: complete with {count} instance(s){merged}; "
                             f"queued as version {number}", version=number, instances=count)
    return ref


def _merge(previous: VersionRef | None, instances: Path) -> int | None:
    """Add the previous version's instances that did not arrive again into ``instances`` (hard links, else
    copies); the previous version's number when nothing new arrived (every arrival equals its file there)."""
    if previous is None:
        return None
    arrived = {name for name in os.listdir(instances) if name.endswith(".dcm")}
    earlier = {name for name in os.listdir(previous.instances) if name.endswith(".dcm")}
    identical = arrived <= earlier
    for name in sorted(earlier):
        old, new = previous.instances / name, instances / name
        if name in arrived:
            identical = identical and filecmp.cmp(old, new, shallow=False)
            continue
        try:
            os.link(old, new)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            shutil.copy2(old, new)
    return previous.number if identical else None


def supersede_previous(spool: Spool, ref: VersionRef, claims: Claims) -> None:
    """Mark the versions before ``ref`` that nobody has started (queued), or whose SEG is written but not sent, as
    superseded by ``ref``, which holds their instances; a version being segmented now is left to finish."""
    if spool.read_state(ref).get("state") != QUEUED:
        return
    for earlier in spool.versions(ref.series):
        if earlier.number >= ref.number or spool.read_state(earlier).get("state") not in (QUEUED, WRITTEN):
            continue
        if claims.claim(earlier.name, []) is not None:
            continue  # being segmented by this or another process
        try:
            if spool.read_state(earlier).get("state") in (QUEUED, WRITTEN):
                spool.write_state(earlier, state=SUPERSEDED, by=ref.number)
                spool.journal.record(SUPERSEDED, ref.series, f"series {ref.series}: version {earlier.number} "
                                     f"superseded by version {ref.number}, which holds its instances and more",
                                     version=earlier.number, by=ref.number)
        finally:
            claims.release(earlier.name)


def recover(spool: Spool, own: bool = False) -> list[VersionRef]:
    """Finish the seals that dead processes left (and clear their temporary files), and with ``own`` this
    process's own unfinished ones (a seal that a full disk stopped; only while this process seals nothing else);
    the versions made."""
    spool.clean_tmp()
    made = []
    mine = f"@{HOST}@{os.getpid()}@"
    for parent in spool.series.iterdir():
        for work in parent.glob(f"{SEAL_PREFIX}@*"):
            if owner_gone(work.name) or (own and mine in work.name):
                ref = finish_seal(spool, work)
                if ref is not None:
                    made.append(ref)
    return made

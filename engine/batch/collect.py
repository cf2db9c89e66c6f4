"""Collecting a running batch's records into its summary, with the progress bar; settling each case's claim; and
stopping on Ctrl-C or SIGTERM."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from ..runtime.signals import Terminated
from .cases import BatchCase
from .claims import Claims
from .records import DONE, INTERRUPTED, CaseRecord
from .settings import BatchSettings
from .summary import BatchProgress, BatchSummary


def settle(claims: Claims | None, record: CaseRecord) -> None:
    """A case ended: a done case's claim becomes the record of its outputs, any other held claim is given up."""
    if claims is None:
        return
    if record.status == DONE and record.files:
        claims.finish(record.case, record.files)
    else:
        claims.release(record.case)


def collect(settings: BatchSettings, todo: list[BatchCase], summary: BatchSummary, records: Iterator[CaseRecord],
            stop: Callable[[], list[CaseRecord]], claims: Claims | None = None) -> KeyboardInterrupt | None:
    """Add ``records`` to ``summary`` with the progress bar, settling each case's claim; on Ctrl-C or SIGTERM,
    ``stop()`` and add the records it returns, and mark every case without a record interrupted.

    Returns what stopped the batch (:class:`KeyboardInterrupt`, or :class:`Terminated` for SIGTERM), or None.
    """
    bar = settings.progress_bar and sys.stderr.isatty()
    progress = BatchProgress(len(todo), bar, settings.quiet, settings.verbose)
    seen: set[str] = set()
    stopped: KeyboardInterrupt | None = None
    try:
        for record in records:
            seen.add(record.case)
            settle(claims, record)
            summary.add(record)
            progress.update(record)
    except KeyboardInterrupt as signal:
        stopped = signal
        what = "terminated (SIGTERM)" if isinstance(signal, Terminated) else "interrupted"
        progress.write(f"tilewise: {what}; finishing the file being written, nothing half-written is kept")
        for record in stop():
            seen.add(record.case)
            settle(claims, record)
            summary.add(record)
    finally:
        progress.close()
    for case in todo:
        if case.name not in seen:
            record = CaseRecord.for_case(case, INTERRUPTED, settings.save_probabilities, "the batch was interrupted",
                                         settings.save_uncertainty)
            settle(claims, record)
            summary.add(record)
    return stopped

"""Collecting a running batch's records into its summary, with the progress bar, and stopping it on Ctrl-C."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from .cases import BatchCase
from .records import INTERRUPTED, CaseRecord
from .settings import BatchSettings
from .summary import BatchProgress, BatchSummary


def collect(settings: BatchSettings, todo: list[BatchCase], summary: BatchSummary, records: Iterator[CaseRecord],
            stop: Callable[[], list[CaseRecord]]) -> bool:
    """Add ``records`` to ``summary`` with the progress bar; on Ctrl-C, ``stop()`` and add the records it returns,
    and mark every case without a record interrupted. True when interrupted."""
    bar = settings.progress_bar and sys.stderr.isatty()
    progress = BatchProgress(len(todo), bar, settings.quiet, settings.verbose)
    seen: set[str] = set()
    interrupted = False
    try:
        for record in records:
            seen.add(record.case)
            summary.add(record)
            progress.update(record)
    except KeyboardInterrupt:
        interrupted = True
        progress.write("tilewise: interrupted; finishing the file being written, nothing half-written is kept")
        for record in stop():
            seen.add(record.case)
            summary.add(record)
    finally:
        progress.close()
    for case in todo:
        if case.name not in seen:
            summary.add(CaseRecord.for_case(case, INTERRUPTED, settings.save_probabilities,
                                            "the batch was interrupted"))
    return interrupted

"""``batch_summary.json`` (every case with status, reason, timings, device and worker) and the batch's progress on
the terminal (a bar with cases done, failed and the ETA; one line per case when stderr is not a terminal)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..data.outputs import write_json
from ..predictor import Predictor
from ..runtime.devices import describe_device
from ..runtime.quiet import unsilenced
from .cases import BatchCase
from .records import DONE, ELSEWHERE, FAILED, INTERRUPTED, SKIPPED, CaseRecord

SUMMARY_NAME = "batch_summary.json"
SAVE_EVERY_S = 30.0
"""How often a running batch rewrites its summary (and always at the end): a killed run leaves a recent one."""


def summary_path(output_dir: Path, num_parts: int, part_id: int) -> Path:
    """``OUT_DIR/batch_summary.json``; with several parts, one file per part (``batch_summary.part2of4.json``), so
    that parts running at the same time into one folder do not replace each other's summary."""
    if num_parts == 1:
        return output_dir / SUMMARY_NAME
    return output_dir / f"batch_summary.part{part_id}of{num_parts}.json"


def earlier_records(path: Path) -> dict[str, dict[str, Any]]:
    """The records of the summary an earlier run left at ``path`` (empty when there is none or it is unreadable)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return {str(record["case"]): record for record in payload["cases"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def recorded_files(earlier: dict[str, Any] | None) -> dict[str, Any] | None:
    """The outputs' sizes and checksums an earlier summary's record of a case holds (None when it has none)."""
    if earlier is None:
        return None
    files = earlier.get("files")
    return files if isinstance(files, dict) and files else None


def skipped_record(case: BatchCase, with_probabilities: bool, earlier: dict[str, Any] | None,
                   files: dict[str, Any], with_uncertainty: bool = False) -> CaseRecord:
    """The record of a case whose outputs were checked whole and unchanged (``files``: their sizes and checksums),
    keeping the earlier run's record of it (timings, device, worker) when there is one, and its uncertain volume
    when asked for (a worklist sorts skipped cases with the others)."""
    record = CaseRecord.for_case(case, SKIPPED, with_probabilities, "finished earlier (--overwrite redoes it)",
                                 with_uncertainty)
    record.files = dict(files)
    if earlier is not None:
        record.earlier = earlier.get("earlier") or earlier  # the run that made the outputs, not a later skip
        volume = record.earlier.get("uncertain_volume_ml")
        if with_uncertainty and isinstance(volume, (int, float)):
            record.uncertain_volume_ml = float(volume)
    return record


class BatchSummary:
    """The summary of one batch run, written atomically to ``path`` now and then and at the end."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.records: list[CaseRecord] = []
        self._started = time.perf_counter()
        self._saved = 0.0

    def add(self, record: CaseRecord) -> None:
        """Add a case's record; rewrite the file when the last write is older than :data:`SAVE_EVERY_S`."""
        self.records.append(record)
        if time.perf_counter() - self._saved > SAVE_EVERY_S:
            self.save(finished=False)

    @property
    def elapsed(self) -> float:
        """Seconds since the summary was started."""
        return time.perf_counter() - self._started

    def count(self, status: str) -> int:
        """How many cases have ``status``."""
        return sum(record.status == status for record in self.records)

    def save(self, finished: bool, **extra: Any) -> None:
        """Write the summary: the header, counts, throughput and every record sorted by case name."""
        elapsed = self.elapsed
        counts = {status: self.count(status) for status in (DONE, FAILED, SKIPPED, INTERRUPTED, ELSEWHERE)}
        payload = {**self.header, **extra, "finished": finished, "elapsed_s": round(elapsed, 3), "counts": counts,
                   "cases_per_minute": round(60 * counts[DONE] / elapsed, 3) if elapsed > 0 else None,
                   "cases": [r.to_json() for r in sorted(self.records, key=lambda r: r.case)]}
        write_json(self.path, payload)
        self._saved = time.perf_counter()


class BatchProgress:
    """Cases done and failed with the ETA: a tqdm bar on a terminal, else one line per finished case."""

    def __init__(self, total: int, bar: bool, quiet: bool, verbose: bool) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.total, self.ended, self.failed = total, 0, 0
        self._bar: Any = None
        if bar and not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="batch", unit="case", file=sys.stderr, dynamic_ncols=True)
            self._bar.set_postfix_str("done 0, failed 0", refresh=True)

    def update(self, record: CaseRecord) -> None:
        """A case ended: advance the bar (or print its line); failures are always printed unless quiet."""
        self.ended += 1
        self.failed += record.status == FAILED
        if self._bar is not None:
            with unsilenced():  # a reader thread may be silencing fd 2 right now
                self._bar.set_postfix_str(f"done {self.ended - self.failed}, failed {self.failed}", refresh=False)
                self._bar.update(1)
        seconds = record.timings.get("total", 0.0)
        line = None
        if record.status == FAILED:
            line = f"tilewise: [{self.ended}/{self.total}] {record.case} failed: {record.reason}"
        elif record.status == ELSEWHERE:
            line = f"tilewise: [{self.ended}/{self.total}] {record.case}: {record.reason}"
        elif self._bar is None or self.verbose:
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in record.timings.items() if k != "total")
            line = f"tilewise: [{self.ended}/{self.total}] {record.case} {record.status} in {seconds:.1f}s" + (
                f" ({stages})" if self.verbose and stages else "")
        if line is not None and not self.quiet:
            self.write(line)

    def write(self, line: str) -> None:
        """Print ``line`` on stderr without breaking the bar (and never into a reader thread's silenced fd 2)."""
        with unsilenced():
            if self._bar is not None:
                self._bar.write(line, file=sys.stderr)
            elif not self.quiet:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            with unsilenced():
                self._bar.close()
            self._bar = None


def predictor_header(predictor: Predictor) -> dict:
    """The summary header's fields of a loaded predictor: model, settings, device, backend, load times."""
    settings = predictor.settings
    return {"model": str(predictor.bundle.path), "configuration": predictor.bundle.configuration_name,
            "folds": settings.folds, "mirror_axes": list(settings.mirror_axes), "tile_step": settings.tile_step,
            "precision": settings.precision, "batch_size": settings.batch_size, "device": str(settings.device),
            "device_name": describe_device(settings.device), "backend": predictor.backend.describe(),
            "nnunet_exact": predictor.nnunet_exact, "load_s": round(predictor.load_seconds, 3),
            "convert_s": round(predictor.convert_seconds, 3)}

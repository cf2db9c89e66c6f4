"""The batch actor: loads the :class:`Predictor` once with the batch's settings, then runs one case at a time
through the same stages as ``tilewise batch`` in one process (so it writes the same bytes), into OUT_DIR."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..batch.cases import BatchCase
from ..batch.records import INTERRUPTED, CaseRecord, run_case
from ..batch.stages import CaseStages
from ..errors import TilewiseError
from ..events import CancelToken
from ..presets import Preset
from ..runtime.memory_plan import MemoryBudget


@dataclass(frozen=True)
class WorkerSettings:
    """What every actor needs to load the model as the batch asks (the ``Predictor`` arguments) and to run."""

    model: str
    preset: Preset
    device: str
    folds: list[str] | None
    checkpoint: str | None
    trust: bool
    nnunet_exact: bool
    with_probabilities: bool
    series_uid: list[str] | None
    """The DICOM series to read of each DICOM case (``--series-uid``)."""
    threads: int
    """CPU threads for this actor: the CPUs Ray reserved for it."""
    seg_type: str = "binary"
    """The DICOM SEG type of a ``dicom-seg`` output (``--seg-type``)."""
    strict_input: bool = False
    """``--strict-input``: a case whose image the model was not trained for fails (else the finding is a note)."""
    prev_stage_predictions: str | None = None
    """``-prev_stage_predictions``: the folder of each case's previous-stage segmentation (a cascade stage)."""


class BatchWorker:
    """One Ray actor's state: the loaded model's stages and a cancel token.

    The driver calls :meth:`load` once, then :meth:`run` per case (Ray runs an actor's calls one at a time, in
    order); :meth:`cancel` runs in a concurrency group of its own, so it reaches a case that is running.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.cancel_token = CancelToken()
        self.stages: CaseStages | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def load(self) -> dict[str, Any]:
        """Load the model; the summary header's model fields and this actor's name (``ray actor ID on HOST:PID``).

        A bad model or setting gives ``{"error": message, "exit_code": status}`` instead, which the driver reports
        as the batch's error (the engine's errors do not survive Ray's pickling, their text does).
        """
        import ray
        import torch

        from ..batch.summary import predictor_header
        from ..model.suitability import InputPolicy, set_input_policy
        from ..predictor import Predictor

        torch.set_num_threads(self.settings.threads)  # the CPUs Ray reserved: actors sharing a node split its cores
        set_input_policy(InputPolicy(strict=self.settings.strict_input))  # an actor has no terminal: notes, or refuse
        actor_id = ray.get_runtime_context().get_actor_id() or "?"
        self.name = f"ray actor {actor_id[:12]} on {self.name} (node {ray.util.get_node_ip_address()})"
        s = self.settings
        try:
            predictor = Predictor(s.model, s.preset, device=s.device, folds=s.folds, checkpoint_name=s.checkpoint,
                                  trust=s.trust, nnunet_exact=s.nnunet_exact, cancel=self.cancel_token,
                                  run_previous_stage=s.prev_stage_predictions is None)
        except TilewiseError as error:
            return {"error": str(error), "exit_code": error.exit_code}
        previous = Path(s.prev_stage_predictions) if s.prev_stage_predictions else None
        self.stages = CaseStages(predictor, MemoryBudget.available_now(predictor.device), s.with_probabilities,
                                 s.series_uid, seg_type=s.seg_type, prev_stage_predictions=previous)
        return {**predictor_header(predictor), "worker": self.name}

    def run(self, case: BatchCase) -> CaseRecord:
        """Read, predict and write ``case`` (each output atomically); its record, also when it failed."""
        assert self.stages is not None, "load() first"
        if self.cancel_token.cancelled:  # queued behind the case that was running when the batch was stopped
            return CaseRecord.for_case(case, INTERRUPTED, self.settings.with_probabilities,
                                       "the batch was interrupted")
        return run_case(self.stages, case, self.cancel_token, self.name)

    def cancel(self) -> None:
        """Stop the running case at its next check (a file being written is finished) and every later one."""
        self.cancel_token.cancel()

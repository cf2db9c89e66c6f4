"""The driver of ``tilewise batch --ray``: starts the actors, feeds them cases, collects their records.

Each actor gets at most :data:`IN_FLIGHT` cases at a time (only their paths travel: the volumes are read by the
actor, so the driver's memory stays small), and a new case as soon as one ends. An actor that dies (its process
killed, its node lost) is replaced while replacements last; the case it was running goes to another actor, with the
death noted in the record's ``retries``, and the cases queued behind it go back to the front of the queue. A case
whose actor died :data:`MAX_ATTEMPTS` times is recorded as failed. A case that fails by itself (an unreadable file,
out of memory, ...) comes back as a failed record from the actor and is not retried.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..batch.cases import BatchCase
from ..batch.records import (
    FAILED,
    CaseRecord,
    failure_reason,
    now_iso,
    problem_record,
    this_worker,
)
from ..batch.settings import BatchSettings
from ..errors import TilewiseError
from ..model.bundle import resolve_model_dir
from .cluster import ActorPlan, Connection, connect, import_ray, plan_actors
from .worker import BatchWorker, WorkerSettings

IN_FLIGHT = 2
"""Cases handed to one actor at a time: the next is queued there when one ends, so no actor waits for the driver."""
MAX_ATTEMPTS = 3
"""Actor deaths after which a case is recorded as failed rather than tried again (it may be what kills them)."""
REPLACEMENTS_PER_ACTOR = 3
"""How many times each actor may be replaced after dying, so that a cluster losing nodes does not loop for ever."""
POLL_S = 0.5
"""Longest wait for a result, so that Ctrl-C is seen."""
STOP_WAIT_S = 600.0
"""After Ctrl-C, how long the driver waits for the actors to finish the files they are writing."""


@dataclass
class _Task:
    case: BatchCase
    retries: list[str] = field(default_factory=list)


@dataclass
class _Actor:
    handle: Any
    loading: Any | None
    """The ``load()`` call's result reference until the model is loaded."""
    name: str = "a Ray actor"
    calls: dict[Any, _Task] = field(default_factory=dict)
    """Result reference -> case, in the order sent (Ray runs them in that order: the first is running)."""


class RayBatch:
    """A batch's cases over Ray actors that each load the model once (see the module's description).

    :meth:`run` yields a record per case as it ends; after Ctrl-C, :meth:`stop` cancels the actors and returns the
    records of the cases that ended meanwhile; :meth:`close` ends the actors and the connection.
    """

    def __init__(self, connection: Connection, plan: ActorPlan, settings: WorkerSettings) -> None:
        self.ray = import_ray()
        self.connection, self.plan, self.settings = connection, plan, settings
        self.model_info: dict[str, Any] = {}
        """The first loaded actor's model fields for the summary header (backend, device, load time, ...)."""
        # the 'control' group lets cancel() run while a case runs in the default group (one call at a time)
        self._worker = self.ray.remote(concurrency_groups={"control": 1})(BatchWorker)
        self._actors: list[_Actor] = []
        self._pending: deque[_Task] = deque()
        self._replacements_left = REPLACEMENTS_PER_ACTOR * plan.count

    def describe(self) -> dict[str, Any]:
        """The summary header's ``ray`` field."""
        return {"address": self.connection.address, "actors": self.plan.count, "num_cpus": self.plan.num_cpus,
                "num_gpus": self.plan.num_gpus}

    def run(self, cases: list[BatchCase]) -> Iterator[CaseRecord]:
        """Start the actors and yield one record per case, in the order the cases end.

        Raises the engine's error when an actor cannot load the model (a bad model folder, an unknown device, ...);
        an unexpected error in ``load`` comes as Ray's error, with the actor's traceback.
        """
        for case in cases:
            if case.problem is not None:  # nothing to send: the case cannot be read
                yield problem_record(case, self.settings.with_probabilities, this_worker())
            else:
                self._pending.append(_Task(case))
        if not self._pending:
            return
        for _ in range(self.plan.count):
            self._start_actor()
        while self._pending or any(actor.calls for actor in self._actors):
            self._send()
            waiting = {ref: actor for actor in self._actors
                       for ref in ([actor.loading] if actor.loading is not None else actor.calls)}
            if not waiting:  # every actor died and none may be started any more
                yield from self._give_up("no Ray actor is left to run it (they died; see the other cases' retries)")
                return
            ready, _ = self.ray.wait(list(waiting), num_returns=1, timeout=POLL_S)
            for ref in ready:
                yield from self._collect(waiting[ref], ref)

    def stop(self) -> list[CaseRecord]:
        """Cancel every actor (a case stops at its next check; a file being written is finished) and wait for their
        running cases to end; their records. A second Ctrl-C stops waiting."""
        for actor in self._actors:
            actor.handle.cancel.options(concurrency_group="control").remote()
        records: list[CaseRecord] = []
        calls = {ref: task for actor in self._actors for ref, task in actor.calls.items()}
        deadline = time.monotonic() + STOP_WAIT_S
        try:
            while calls and time.monotonic() < deadline:
                ready, _ = self.ray.wait(list(calls), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    task = calls.pop(ref)
                    try:
                        records.append(self._with_retries(self.ray.get(ref), task))
                    except self.ray.exceptions.RayError:
                        pass  # its actor died: the case stays unrecorded and is marked interrupted
        except KeyboardInterrupt:
            pass
        return records

    def close(self) -> None:
        """End the actors (their reserved CPUs and GPUs return to the cluster) and this process's connection."""
        for actor in self._actors:
            self.ray.kill(actor.handle, no_restart=True)
        self._actors.clear()
        self.connection.close()

    def _start_actor(self) -> None:
        # SPREAD puts actors on different nodes before two share one
        handle = self._worker.options(num_cpus=self.plan.num_cpus, num_gpus=self.plan.num_gpus,
                                      scheduling_strategy="SPREAD", max_restarts=0).remote(self.settings)
        self._actors.append(_Actor(handle, handle.load.remote()))

    def _send(self) -> None:
        for actor in self._actors:
            while actor.loading is None and self._pending and len(actor.calls) < IN_FLIGHT:
                task = self._pending.popleft()
                actor.calls[actor.handle.run.remote(task.case)] = task

    def _collect(self, actor: _Actor, ref: Any) -> Iterator[CaseRecord]:
        if ref is actor.loading:
            try:
                info = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as error:
                yield from self._lost(actor, error)
                return
            if "error" in info:  # the model or a setting is wrong: every actor would fail the same way
                raise _load_error(info)
            actor.loading, actor.name = None, info["worker"]
            self.model_info = self.model_info or {k: v for k, v in info.items() if k != "worker"}
            return
        try:
            record = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:
            yield from self._lost(actor, error)
            return
        except self.ray.exceptions.RayTaskError as error:  # run_case records a case's own failures: a bug
            record = self._failed(actor.calls[ref], failure_reason(error.cause or error), actor.name)
        yield self._with_retries(record, actor.calls.pop(ref))

    def _lost(self, actor: _Actor, error: Exception) -> Iterator[CaseRecord]:
        """``actor`` died: keep what it finished, retry the case it ran elsewhere, requeue the rest, replace it."""
        self._actors.remove(actor)
        self.ray.kill(actor.handle, no_restart=True)
        why = f"{actor.name} died ({_first_line(error)})"
        requeue: list[_Task] = []
        running = True
        for ref, task in actor.calls.items():
            if self.ray.wait([ref], timeout=0)[0]:
                try:  # it ended before the actor died
                    yield self._with_retries(self.ray.get(ref), task)
                    continue
                except self.ray.exceptions.RayError:
                    pass
            if running:  # Ray runs an actor's calls in order: the first unfinished one was running
                running = False
                task.retries.append(f"{now_iso()} {why}")
                if len(task.retries) >= MAX_ATTEMPTS:
                    yield self._failed(task, f"its Ray actor died {len(task.retries)} times while running it; last: "
                                        f"{why}", actor.name)
                    continue
            requeue.append(task)
        self._pending.extendleft(reversed(requeue))
        if self._replacements_left > 0:
            self._replacements_left -= 1
            self._start_actor()

    def _give_up(self, reason: str) -> Iterator[CaseRecord]:
        while self._pending:
            yield self._failed(self._pending.popleft(), reason, this_worker())

    def _failed(self, task: _Task, reason: str, worker: str) -> CaseRecord:
        record = CaseRecord.for_case(task.case, FAILED, self.settings.with_probabilities, reason)
        record.worker, record.finished = worker, now_iso()
        return self._with_retries(record, task)

    @staticmethod
    def _with_retries(record: CaseRecord, task: _Task) -> CaseRecord:
        record.retries = list(task.retries)
        return record


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


def _load_error(info: dict[str, Any]) -> TilewiseError:
    """The engine's error an actor met loading the model: its one-line message and exit status."""
    error = TilewiseError(None, info["error"])
    error.exit_code = info["exit_code"]
    return error


def start_ray_batch(settings: BatchSettings) -> RayBatch:
    """Connect to the cluster ``settings.ray`` names and plan the actors for the batch's settings."""
    connection = connect(settings.ray or "auto", settings.verbose)
    ray = import_ray()
    try:
        plan = plan_actors(ray.nodes(), settings.ray_actors)
    except TilewiseError:
        connection.close()
        raise
    worker = WorkerSettings(
        model=str(resolve_model_dir(settings.model).resolve()), preset=settings.preset, device=settings.device,
        folds=settings.folds, checkpoint=settings.checkpoint, trust=settings.trust,
        nnunet_exact=settings.nnunet_exact, with_probabilities=settings.save_probabilities,
        series_uid=settings.series_uid, threads=plan.num_cpus, strict_input=settings.strict_input,
        seg_type=settings.seg_type, prev_stage_predictions=_absolute(settings.prev_stage_predictions))
    return RayBatch(connection, plan, worker)


def _absolute(folder: Path | None) -> str | None:
    """``folder`` as an absolute path for the actors (None stays None)."""
    return None if folder is None else str(Path(folder).resolve())

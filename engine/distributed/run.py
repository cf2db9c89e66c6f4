"""``tilewise batch --ray`` as the batch engine's :class:`~..batch.run.RemoteRunner`: the cases on Ray actors, with
the same records, summary and Ctrl-C as a batch in one process."""
from __future__ import annotations

import sys
from dataclasses import replace

from ..batch.cases import BatchCase
from ..batch.claims import Claims
from ..batch.collect import collect
from ..batch.settings import BatchSettings
from ..batch.summary import BatchSummary
from ..model.bundle import resolve_model_dir
from .cluster import import_ray
from .driver import start_ray_batch


class RayRunner:
    """Runs a batch's cases on Ray actors (Ray is imported only when a batch asks for it)."""

    def prepare(self, settings: BatchSettings) -> BatchSettings:
        """Say what to install when Ray is missing, before anything else; every path absolute, since actors run in
        other folders, maybe on other machines."""
        import_ray()
        return replace(settings, input=settings.input.resolve(), output=settings.output.resolve(),
                       model=str(resolve_model_dir(settings.model).resolve()))

    def run(self, settings: BatchSettings, todo: list[BatchCase], summary: BatchSummary, total: int,
            claims: Claims) -> KeyboardInterrupt | None:
        """Run ``todo`` on Ray actors into ``summary``, settling ``claims``; what stopped it (Ctrl-C, SIGTERM) or
        None."""
        batch = start_ray_batch(settings)
        try:
            summary.header["ray"] = batch.describe()
            if settings.verbose and not settings.quiet:
                print(f"tilewise: {len(todo)} of {total} case(s) to run on Ray at {batch.connection.address}: "
                      f"{batch.plan.describe()}", file=sys.stderr)
            return collect(settings, todo, summary, batch.run(todo), batch.stop, claims)
        finally:
            summary.header.update(batch.model_info)
            batch.close()

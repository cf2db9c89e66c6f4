"""``tilewise batch``: every case of a folder through one loaded model, pipelined, resumable and fault-tolerant.

This module only turns the command line into :class:`~..batch.settings.BatchSettings` and calls the batch engine
(:func:`~..batch.run.run_batch`); with ``--ray`` the cases run on Ray actors (:mod:`tilewise.engine.distributed`).
Exit status: 0 when every case succeeded (or was finished earlier), 3 when some failed, 130 when interrupted,
143 when terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..batch import run as batch_run
from ..batch.settings import BatchSettings
from .options import preset_from_args


def settings_from_args(args: argparse.Namespace) -> BatchSettings:
    """The batch's settings from its parsed command line."""
    return BatchSettings(
        input=Path(args.input), output=args.output, model=args.model, preset=preset_from_args(args),
        preset_name=args.preset, fast=args.fast, roi_subset=args.roi_subset, step=args.step_size,
        device=args.device, folds=args.folds, checkpoint=args.checkpoint,
        trust=args.trust_model, nnunet_exact=args.nnunet_exact, workers=args.workers, num_parts=args.num_parts,
        part_id=args.part_id, output_type=args.output_type, seg_type=args.seg_type,
        prev_stage_predictions=args.prev_stage_predictions, save_probabilities=args.save_probabilities,
        save_uncertainty=args.save_uncertainty,
        series_uid=args.series_uid, overwrite=args.overwrite, ray=args.ray, ray_actors=args.ray_actors,
        strict_input=args.strict_input, quiet=args.quiet, verbose=args.verbose, progress_bar=not args.disable_progress_bar)


def run_batch(args: argparse.Namespace) -> int:
    """Run the batch command; returns the exit status."""
    settings = settings_from_args(args)
    remote: batch_run.RemoteRunner | None = None
    if settings.ray is not None:
        from ..distributed.run import RayRunner  # Ray only when asked for: it is an optional extra

        remote = RayRunner()
    return batch_run.run_batch(settings, remote)

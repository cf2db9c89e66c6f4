"""Loading a model fold by fold, with a :class:`~.events.LoadEvent` before each fold's checkpoint is read."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .events import LOADING, LoadHandler, LoadReporter, check_cancelled
from .model.bundle import ModelBundle, available_folds, check_model_folder

__all__ = ["LoadHandler", "LoadReporter", "load_bundle"]
"""What a predictor needs to load a model with progress (the event types live in :mod:`.events`)."""


def load_bundle(model_dir: Path | str, folds: list[str] | None, checkpoint_name: str | None, trust: bool,
                fold_count: int | None, reporter: LoadReporter) -> ModelBundle:
    """:meth:`ModelBundle.load` one fold at a time, reporting 'loading' before each fold's checkpoint is read (the
    same checks, the same bundle; Cancel lands between folds). Without a handler it is one plain load."""
    path = check_model_folder(model_dir)  # 'demo' names the bundled model; a missing folder fails here in one line
    chosen = [str(f) for f in folds] if folds else available_folds(path, checkpoint_name)[:fold_count]
    if reporter.handler is None or len(chosen) < 2:
        if chosen:
            reporter.report(1, len(chosen), LOADING)
        return ModelBundle.load(model_dir, folds=folds, checkpoint_name=checkpoint_name, trust=trust,
                                fold_count=fold_count)
    parts = []
    for index, fold in enumerate(chosen, start=1):
        check_cancelled()
        reporter.report(index, len(chosen), LOADING)
        parts.append(ModelBundle.load(model_dir, folds=[fold], checkpoint_name=checkpoint_name, trust=trust))
    first = parts[0]
    return replace(first, folds=chosen, fold_weights=[part.fold_weights[0] for part in parts])

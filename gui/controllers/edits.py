"""What was edited in each result since it was last saved, and its voxel counts kept up to date.

Edits: napari's brush, fill, erase and polygon end in the layer's ``paint`` event with their history entry; undo and
redo replay one (:func:`.._compat.on_undo_redo`). The counts change by just the voxels an entry changed, on the spot;
a larger entry, or a new array, is counted whole on a thread, coalesced. A result has unsaved edits while its history
is not where it was when last saved (undoing back to it leaves none).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from superqt.utils import qdebounced

from .. import _compat
from ..layers import META_COUNTS
from ..volumes import apply_change, count_change, count_labels
from .tasks import BackgroundTask
from .weak import alive, connect_weakly

INLINE_VOXELS = 1_000_000
"""Edits changing up to this many voxels are counted on the GUI thread (about a millisecond); larger ones on a
thread."""
RECOUNT_DELAY_MS = 150
"""Whole counts wait this long after the last edit that needs one, so a burst of edits costs one count."""


@dataclass
class _Edits:
    """The edit history of one result, mirrored from napari's (entry ids, oldest first), and its counting state."""

    applied: list[int] = field(default_factory=list)
    undone: list[int] = field(default_factory=list)  # the next redo last
    saved: int | None = None  # the entry in effect when last saved (None: as the run left it)
    generation: int = 0  # bumped by every edit: a whole count started before the last edit is stale
    needs_count: bool = False  # the counts wait for a whole count
    replay_countable: bool = True  # False once the array was replaced: napari's history no longer describes it

    @property
    def unsaved(self) -> bool:
        return (self.applied[-1] if self.applied else None) != self.saved


class EditTracker(QObject):
    """The edits of the results it tracks: whether each has unsaved ones, and its voxel counts (metadata)."""

    counts_changed = Signal(object)    # a result whose voxel counts (metadata) changed
    edits_changed = Signal(object)     # a result whose unsaved-edits state changed

    def __init__(self, viewer: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._edits: dict[Any, _Edits] = {}
        self._ids = count(1)
        self._saving: tuple[Any, int | None] | None = None
        self._counter: tuple[Any, int, BackgroundTask] | None = None
        # one whole count RECOUNT_DELAY_MS after the last call (the debouncer is a child of this object)
        self._count_soon = qdebounced(self._count_next, timeout=RECOUNT_DELAY_MS, parent=self)
        self._napari: dict[tuple[Any, str], Callable[..., Any]] = {}  # (emitter, method name) -> what napari calls

    def track(self, result: Any) -> None:
        """Follow the edits of ``result`` from now on (as the run left it: nothing unsaved)."""
        if result in self._edits:
            return
        self._edits[result] = _Edits()
        for emitter, callback in ((result.events.paint, self._on_paint), (result.events.data, self._on_data)):
            self._napari[(emitter, callback.__name__)] = connect_weakly(emitter, callback)
        _compat.on_undo_redo(result, self._on_replayed)

    def forget(self, result: Any) -> None:
        """Stop following ``result`` (it was closed or replaced)."""
        if self._edits.pop(result, None) is None:
            return
        for emitter, name in ((result.events.paint, "_on_paint"), (result.events.data, "_on_data")):
            emitter.disconnect(self._napari.pop((emitter, name)))

    def has_unsaved_edits(self, result: Any) -> bool:
        """True when ``result`` was edited since it was last saved (or made)."""
        edits = self._edits.get(result)
        return edits is not None and edits.unsaved

    def unsaved(self) -> list[Any]:
        """The results with unsaved edits, in the viewer's order."""
        return [layer for layer in self.viewer.layers if self.has_unsaved_edits(layer)]

    def start_saving(self, result: Any) -> None:
        """``result`` is being written as it is now: :meth:`finish_saving` says whether that worked."""
        edits = self._edits.get(result)
        entry = edits.applied[-1] if edits is not None and edits.applied else None
        self._saving = (result, entry)

    def finish_saving(self, succeeded: bool) -> None:
        """The write started by :meth:`start_saving` has ended (``succeeded``: the file holds those labels)."""
        saving, self._saving = self._saving, None
        if saving is None or not succeeded:
            return
        result, entry = saving
        edits = self._edits.get(result)
        if edits is not None:
            edits.saved = entry
            self.edits_changed.emit(result)

    def discard_edits(self, results: list[Any]) -> None:
        """The person chose to lose the unsaved edits of ``results``: they count as saved from now on."""
        for result in results:
            edits = self._edits.get(result)
            if edits is None:
                continue
            edits.saved = edits.applied[-1] if edits.applied else None
            self.edits_changed.emit(result)

    def _new_entry(self, layer: Any) -> _Edits | None:
        edits = self._edits.get(layer)
        if edits is not None:
            edits.applied.append(next(self._ids))
            edits.undone.clear()  # as napari's history: a new edit ends the redos
        return edits

    def _on_paint(self, event: Any) -> None:
        """A brush stroke, fill, erase or polygon was committed to the layer's history."""
        edits = self._new_entry(event.source)
        if edits is not None:
            self._count_edit(event.source, edits, _compat.history_changes(event.value), undone=False)

    def _on_replayed(self, layer: Any, entry: Any, undone: bool) -> None:
        """napari undid (or redid) history ``entry``."""
        edits = self._edits.get(layer)
        if edits is None or not alive(self):
            return
        source, target = (edits.applied, edits.undone) if undone else (edits.undone, edits.applied)
        if source:
            target.append(source.pop())
        changes = _compat.history_changes(entry) if edits.replay_countable else None
        self._count_edit(layer, edits, changes, undone=undone)

    def _on_data(self, event: Any) -> None:
        """The layer was given a new array."""
        edits = self._new_entry(event.source)
        if edits is not None:
            edits.replay_countable = False
            self._count_edit(event.source, edits, None, undone=False)

    def _count_edit(self, layer: Any, edits: _Edits, changes: list | None, undone: bool) -> None:
        edits.generation += 1
        counts = layer.metadata.get(META_COUNTS)
        inline = (changes is not None and counts is not None and not edits.needs_count
                  and sum(np.size(before) for before, _ in changes) <= INLINE_VOXELS)
        if inline:
            layer.metadata = {**layer.metadata, META_COUNTS: apply_change(counts, count_change(changes, undone))}
            self.counts_changed.emit(layer)
        else:
            edits.needs_count = True
            self._count_soon()
        self.edits_changed.emit(layer)

    def _count_next(self) -> None:
        """Count one result that waits for a whole count, on a thread (one at a time)."""
        if self._counter is not None:
            return
        waiting = [layer for layer, edits in self._edits.items() if edits.needs_count]
        if not waiting:
            return
        layer = waiting[0]
        task = BackgroundTask(count_labels, np.asarray(layer.data))
        task.succeeded.connect(self._on_counted)
        task.failed.connect(self._on_counted)  # a message: the counts stay as they were
        self._counter = (layer, self._edits[layer].generation, task)
        task.start()

    def _on_counted(self, counts: dict[int, int] | str) -> None:
        counter, self._counter = self._counter, None
        if counter is None:
            return
        layer, generation, task = counter
        task.wait(10_000)
        task.deleteLater()
        edits = self._edits.get(layer)
        if edits is not None and edits.generation == generation:  # no edit came while counting
            edits.needs_count = False
            if isinstance(counts, dict):
                layer.metadata = {**layer.metadata, META_COUNTS: dict(counts)}
                self.counts_changed.emit(layer)
        if any(edits.needs_count for edits in self._edits.values()):
            self._count_soon()

    def shutdown(self) -> None:
        """Wait for a count in progress (the window is closing)."""
        counter, self._counter = self._counter, None
        if alive(self):
            self._count_soon.cancel()
        if counter is not None and alive(counter[2]):
            counter[2].succeeded.disconnect()
            counter[2].failed.disconnect()
            counter[2].wait()

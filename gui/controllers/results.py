"""Which Tilewise result belongs to which image, what the review shows, and what was edited since the last save.

One result per image: a finished run replaces the image's previous result, a cancelled or failed one leaves it
(hidden during the run, so it does not show through the tiles not yet done). A previous result with unsaved edits is
kept instead, hidden and renamed with its preset. The review follows napari's selection: the selected result (or
run preview), else the selected image's result. A new image goes below the results, so they stay in sight.

Edits: napari's brush, fill, erase and polygon end in the layer's ``paint`` event with their history entry; undo and
redo replay one (:func:`.._compat.on_undo_redo`). The counts change by just the voxels an entry changed, on the spot;
a larger entry, or a new array, is counted whole on a thread, coalesced. A result has unsaved edits while its history
is not where it was when last saved (undoing back to it leaves none).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from .. import _compat
from ..layers import META_COUNTS, META_PRESET, META_PREVIEW, result_name
from ..volumes import apply_change, count_change, count_labels
from .tasks import BackgroundTask

INLINE_VOXELS = 1_000_000
"""Edits changing up to this many voxels are counted on the GUI thread (about a millisecond); larger ones on a thread."""
RECOUNT_DELAY_MS = 150
"""Whole counts wait this long after the last edit that needs one, so a burst of edits costs one count."""


def call_soon(method: Callable[..., Any], *args: Any) -> None:
    """Call bound ``method(*args)`` once the GUI thread is back in its event loop, unless its object is gone by then
    (held weakly: a pending call never keeps a closed viewer alive)."""
    reference = weakref.WeakMethod(method)

    def call() -> None:
        bound = reference()
        if bound is not None:
            bound(*args)

    QTimer.singleShot(0, call)


def _alive(qobject: QObject) -> bool:
    try:
        qobject.objectName()
    except RuntimeError:  # Qt deleted it (its widget or window was closed); the Python object lingers
        return False
    return True


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


class ResultsController(QObject):
    """The results in ``viewer`` per image, the one to review, and each one's edits and voxel counts."""

    changed = Signal()                 # results came or went, or the selection changed: review again
    counts_changed = Signal(object)    # a result whose voxel counts (metadata) changed
    edits_changed = Signal(object)     # a result whose unsaved-edits state changed
    notice = Signal(str)               # a sentence for the person: where a result went
    removal_needs_answer = Signal(object, int, list)  # layer removed, its index, the results whose edits it would lose
    run_image_removed = Signal()       # the image of the run going on was removed: cancel the run

    def __init__(self, viewer: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._current: dict[Any, Any] = {}   # image layer -> its result
        self._image_of: dict[Any, Any] = {}  # result (also kept versions) -> image layer
        self._edits: dict[Any, _Edits] = {}
        self._ids = count(1)
        self._quiet: set[Any] = set()        # layers this controller removes or puts back itself
        self._run: tuple[Any, Any] | None = None  # (image, preview layer) of the run going on
        self._hidden_for_run: Any = None
        self._saving: tuple[Any, int | None] | None = None
        self._counter: tuple[Any, int, BackgroundTask] | None = None
        self._recount_timer = QTimer(self)
        self._recount_timer.setSingleShot(True)
        self._recount_timer.setInterval(RECOUNT_DELAY_MS)
        self._recount_timer.timeout.connect(self._count_next)
        self._napari: dict[tuple[Any, str], Callable[..., Any]] = {}  # (emitter, method name) -> what napari calls
        for emitter, callback in ((viewer.layers.events.inserted, self._on_inserted),
                                  (viewer.layers.events.removed, self._on_removed),
                                  (viewer.layers.selection.events.active, self._on_selection),
                                  (viewer.layers.selection.events.changed, self._on_selection)):
            self._connect(emitter, callback)

    # ---- which result ---------------------------------------------------------------------------
    def result_of(self, image: Any) -> Any:
        """The current result of image layer ``image`` (None if it has none)."""
        return self._current.get(image)

    def image_of(self, result: Any) -> Any:
        """The image layer ``result`` was made from (None if not known)."""
        return self._image_of.get(result)

    def results_of(self, image: Any) -> list[Any]:
        """Every result of ``image``: the current one and kept versions with unsaved edits."""
        return [result for result, source in self._image_of.items() if source is image]

    def reviewed(self) -> Any:
        """The layer the review shows: the selected result or run preview, else the selected image's (the preview
        while its run goes on); None when nothing of Tilewise's is selected."""
        selection = self.viewer.layers.selection
        active = selection.active
        if active is None and len(selection) == 1:
            active = next(iter(selection))
        if active is None:
            return None
        if META_PREVIEW in getattr(active, "metadata", {}):
            return active
        if self._run is not None and active is self._run[0]:
            return self._run[1]
        result = self._current.get(active)
        return result if result is not None and result in self.viewer.layers else None

    def any_results(self) -> bool:
        """True while the viewer holds a result."""
        return bool(self._image_of)

    # ---- runs -----------------------------------------------------------------------------------
    def begin_run(self, image: Any, preview: Any) -> None:
        """A run on ``image`` fills in ``preview``: its current result is hidden until the run has ended."""
        self._run = (image, preview)
        self.notice.emit("")  # what an earlier run's end said is old news now
        previous = self._current.get(image)
        if previous is not None and previous.visible:
            previous.visible = False
            self._hidden_for_run = previous
        self.changed.emit()

    def adopt(self, result: Any) -> None:
        """The run has finished with ``result``: it becomes its image's result; the previous one is removed, or kept
        (hidden, renamed with its preset) when it has unsaved edits."""
        if self._run is None:
            return
        image, _preview = self._run
        if image not in self.viewer.layers:  # the image went while its run finished: so does the result
            self._remove_quietly([result])
            return
        previous = self._current.get(image)
        self._hidden_for_run = None
        if previous is not None and previous is not result:
            if self.has_unsaved_edits(previous):
                preset = previous.metadata.get(META_PRESET) or "earlier run"
                previous.name = f"{previous.name} ({preset}, edited)"
                self.notice.emit(f"The previous segmentation of {image.name} has unsaved edits: it is kept, hidden, "
                                 f"as '{previous.name}'.")
            else:
                self._remove_quietly([previous])
                self.notice.emit(f"The new segmentation replaces the previous one of {image.name}.")
        result.name = result_name(image)  # napari added ' [1]' while the previous one had the name
        self._current[image] = result
        self._image_of[result] = image
        self._track(result)
        self.changed.emit()

    def end_run(self) -> None:
        """The run has ended (also after :meth:`adopt`): a result hidden for it is shown again."""
        hidden, self._hidden_for_run = self._hidden_for_run, None
        self._run = None
        if hidden is not None and hidden in self.viewer.layers:
            hidden.visible = True
        self.changed.emit()

    # ---- edits and saving -----------------------------------------------------------------------
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
        self._saving = (result, (edits.applied[-1] if edits and edits.applied else None))

    def finish_saving(self, succeeded: bool) -> None:
        """The write started by :meth:`start_saving` has ended (``succeeded``: the file holds those labels)."""
        saving, self._saving = self._saving, None
        if succeeded and (edits := self._edits.get(saving[0]) if saving is not None else None) is not None:
            edits.saved = saving[1]
            self.edits_changed.emit(saving[0])

    def discard_edits(self, results: list[Any]) -> None:
        """The person chose to lose the unsaved edits of ``results``: they count as saved from now on."""
        for result in results:
            if (edits := self._edits.get(result)) is not None:
                edits.saved = edits.applied[-1] if edits.applied else None
                self.edits_changed.emit(result)

    def _track(self, result: Any) -> None:
        if result in self._edits:
            return
        self._edits[result] = _Edits()
        self._connect(result.events.paint, self._on_paint)
        self._connect(result.events.data, self._on_data)
        _compat.on_undo_redo(result, self._on_replayed)

    def _connect(self, emitter: Any, callback: Callable[..., Any]) -> None:
        """Connect a napari event to a method, held weakly; napari's events outlive this object when Qt deletes it
        (the widget or the window was closed, the viewer stays), so it disconnects itself then."""
        method = weakref.WeakMethod(callback)

        def call(*args: Any) -> None:
            bound = method()
            if bound is not None and _alive(bound.__self__):
                bound(*args)
            else:
                emitter.disconnect(call)

        emitter.connect(call)
        self._napari[(emitter, callback.__name__)] = call

    def _new_entry(self, layer: Any) -> _Edits | None:
        edits = self._edits.get(layer)
        if edits is not None:
            edits.applied.append(next(self._ids))
            edits.undone.clear()  # as napari's history: a new edit ends the redos
        return edits

    def _on_paint(self, event: Any) -> None:
        """A brush stroke, fill, erase or polygon was committed to the layer's history."""
        if (edits := self._new_entry(event.source)) is not None:
            self._count_edit(event.source, edits, _compat.history_changes(event.value), undone=False)

    def _on_replayed(self, layer: Any, entry: Any, undone: bool) -> None:
        """napari undid (or redid) history ``entry``."""
        edits = self._edits.get(layer)
        if edits is None or not _alive(self):
            return
        source, target = (edits.applied, edits.undone) if undone else (edits.undone, edits.applied)
        if source:
            target.append(source.pop())
        changes = _compat.history_changes(entry) if edits.replay_countable else None
        self._count_edit(layer, edits, changes, undone=undone)

    def _on_data(self, event: Any) -> None:
        """The layer was given a new array."""
        if (edits := self._new_entry(event.source)) is not None:
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
            self._recount_timer.start()
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
            self._recount_timer.start()

    # ---- the layer list -------------------------------------------------------------------------
    def put_back(self, layer: Any, index: int) -> None:
        """Insert ``layer`` again where it was (the person cancelled its removal)."""
        self._quiet.add(layer)
        try:
            self.viewer.layers.insert(min(index, len(self.viewer.layers)), layer)
        finally:
            self._quiet.discard(layer)
        self.changed.emit()

    def complete_removal(self, layer: Any) -> None:
        """``layer`` stays removed, losing its results' unsaved edits: the results of an image go with it."""
        if layer in self._image_of:
            self._forget(layer)
        else:
            self._remove_image_results(layer)
        self.changed.emit()

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        if layer in self._quiet:
            return
        if layer in self._image_of:
            if self.has_unsaved_edits(layer):
                self.removal_needs_answer.emit(layer, event.index, [layer])
                return
            self._forget(layer)
        elif self.results_of(layer) or (self._run is not None and self._run[0] is layer):
            edited = [result for result in self.results_of(layer) if self.has_unsaved_edits(result)]
            if edited:
                self.removal_needs_answer.emit(layer, event.index, edited)
                return
            self._remove_image_results(layer)
        self.changed.emit()

    def _remove_image_results(self, image: Any) -> None:
        if self._run is not None and self._run[0] is image:
            self.run_image_removed.emit()  # its run stops; its labels would have no image to belong to
        results = self.results_of(image)
        self._current.pop(image, None)
        if results:
            self._remove_quietly(results)
            self.notice.emit(f"The segmentation of {image.name} was closed with its image.")

    def _remove_quietly(self, layers: list[Any]) -> None:
        for layer in layers:
            self._forget(layer)
            if layer in self.viewer.layers:
                self._quiet.add(layer)
                try:
                    self.viewer.layers.remove(layer)
                finally:
                    self._quiet.discard(layer)

    def _forget(self, result: Any) -> None:
        image = self._image_of.pop(result, None)
        if image is not None and self._current.get(image) is result:
            del self._current[image]
        if self._edits.pop(result, None) is not None:
            for emitter, name in ((result.events.paint, "_on_paint"), (result.events.data, "_on_data")):
                emitter.disconnect(self._napari.pop((emitter, name)))

    def _on_inserted(self, event: Any) -> None:
        from napari.layers import Image

        if isinstance(event.value, Image) and event.value not in self._quiet:
            call_soon(self._keep_results_on_top, event.value)

    def _keep_results_on_top(self, image: Any) -> None:
        """A new image went on top of the layer list: move it below the results, so they stay in sight."""
        layers = self.viewer.layers
        if image not in layers:
            return
        shown = [layer for layer in layers if layer in self._image_of and layer.visible]
        position = layers.index(image)
        lowest = min((layers.index(layer) for layer in shown), default=position)
        if position <= lowest:
            return
        layers.move(position, lowest)
        what = f"'{shown[0].name}' stays" if len(shown) == 1 else f"{len(shown)} segmentations stay"
        self.notice.emit(f"{what} on top of {image.name}: untick it in the layer list to see the image alone.")

    def _on_selection(self, *_: object) -> None:
        self.changed.emit()

    def shutdown(self) -> None:
        """Wait for a count in progress (the window is closing)."""
        counter, self._counter = self._counter, None
        if _alive(self):
            self._recount_timer.stop()
        if counter is not None and _alive(counter[2]):
            counter[2].succeeded.disconnect()
            counter[2].failed.disconnect()
            counter[2].wait()

"""Which Tilewise result belongs to which image, and what the review shows.

One result per image: a finished run replaces the image's previous result, a cancelled or failed one leaves it
(hidden during the run, so it does not show through the tiles not yet done). A previous result with unsaved edits is
kept instead, hidden and renamed with its preset. The review follows napari's selection: the selected result (or
run preview), else the selected image's result. A new image goes below the results, so they stay in sight. What
was edited in each result is the :class:`~.edits.EditTracker`'s.

"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

from ..layers import META_PRESET, META_PREVIEW, result_name
from .edits import EditTracker
from .weak import call_soon, connect_weakly


class ResultsController(QObject):
    """The results in ``viewer`` per image, the one to review, and each one's edits and voxel counts."""

    changed = Signal()                 # results came or went, or the selection changed: review again
    counts_changed = Signal(object)    # a result whose voxel counts (metadata) changed
    edits_changed = Signal(object)     # a result whose unsaved-edits state changed
    notice = Signal(str, list)         # a sentence for the person (where a result went), the layers it is about
    removal_needs_answer = Signal(object, int, list)  # layer removed, its index, the results whose edits it would lose
    run_image_removed = Signal()       # the image of the run going on was removed: cancel the run

    def __init__(self, viewer: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._current: dict[Any, Any] = {}   # image layer -> its result
        self._image_of: dict[Any, Any] = {}  # result (also kept versions) -> image layer
        self.edits = EditTracker(viewer, self)
        self.edits.counts_changed.connect(self.counts_changed)
        self.edits.edits_changed.connect(self.edits_changed)
        self._quiet: set[Any] = set()        # layers this controller removes or puts back itself
        self._attached: dict[Any, Any] = {}  # a layer showing something of a result (its uncertainty) -> the result
        self._run: tuple[Any, Any] | None = None  # (image, preview layer) of the run going on
        self._hidden_for_run: Any = None
        self._napari: dict[tuple[Any, str], Callable[..., Any]] = {}  # (emitter, method name) -> what napari calls
        for emitter, callback in ((viewer.layers.events.inserted, self._on_inserted),
                                  (viewer.layers.events.removed, self._on_removed),
                                  (viewer.layers.selection.events.active, self._on_selection),
                                  (viewer.layers.selection.events.changed, self._on_selection)):
            self._napari[(emitter, callback.__name__)] = connect_weakly(emitter, callback)

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
        active = self._attached.get(active, active)
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
        self.notice.emit("", [])  # what an earlier run's end said is old news now
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
                                 f"as '{previous.name}'.", [image, previous])
            else:
                self._remove_quietly([previous])
                self.notice.emit(f"The new segmentation replaces the previous one of {image.name}.", [image, result])
        result.name = result_name(image)  # napari added ' [1]' while the previous one had the name
        self._current[image] = result
        self._image_of[result] = image
        self.edits.track(result)
        self.changed.emit()

    def end_run(self) -> None:
        """The run has ended (also after :meth:`adopt`): a result hidden for it is shown again."""
        hidden, self._hidden_for_run = self._hidden_for_run, None
        self._run = None
        if hidden is not None and hidden in self.viewer.layers:
            hidden.visible = True
        self.changed.emit()

    # ---- edits and saving (the EditTracker's) ---------------------------------------------------
    def has_unsaved_edits(self, result: Any) -> bool:
        """True when ``result`` was edited since it was last saved (or made)."""
        return self.edits.has_unsaved_edits(result)

    def unsaved(self) -> list[Any]:
        """The results with unsaved edits, in the viewer's order."""
        return self.edits.unsaved()

    def start_saving(self, result: Any) -> None:
        """``result`` is being written as it is now: :meth:`finish_saving` says whether that worked."""
        self.edits.start_saving(result)

    def finish_saving(self, succeeded: bool) -> None:
        """The write started by :meth:`start_saving` has ended (``succeeded``: the file holds those labels)."""
        self.edits.finish_saving(succeeded)

    def discard_edits(self, results: list[Any]) -> None:
        """The person chose to lose the unsaved edits of ``results``: they count as saved from now on."""
        self.edits.discard_edits(results)

    # ---- the layer list -------------------------------------------------------------------------
    def attach(self, layer: Any, result: Any) -> None:
        """``layer``, about to be added, shows something of ``result`` (its uncertainty): it stays where it is put
        (an opened image goes below the results), and selecting it reviews ``result``, until it is removed."""
        self._attached[layer] = result

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
        if self._attached.pop(layer, None) is not None:
            self.changed.emit()
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
            self.notice.emit(f"The segmentation of {image.name} was closed with its image.", [])

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
        self.edits.forget(result)

    def _on_inserted(self, event: Any) -> None:
        from napari.layers import Image

        if isinstance(event.value, Image) and event.value not in self._quiet and event.value not in self._attached:
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
        self.notice.emit(f"{what} on top of {image.name}: untick it in the layer list to see the image alone.",
                         [image, *shown])

    def _on_selection(self, *_: object) -> None:
        self.changed.emit()

    def shutdown(self) -> None:
        """Wait for a count in progress (the window is closing)."""
        self.edits.shutdown()

"""Is the chosen image right for the chosen model? The engine's suitability check (modality, intensities against
the model's training fingerprint, spacing, NaN voxels), run off the GUI thread whenever the image or the model
changes, so the Run step can say it in plain words before the person presses Run. A finished result keeps what
was said of its image (:data:`~..layers.META_FIT` in its metadata), so the review says it while it is selected."""
from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from tilewise.engine import Volume, check_image

from ..geometry import geometry_from_layer
from ..layers import META_FIT
from .tasks import BackgroundTask
from .weak import alive


def findings_for(model_dir: Path, channels: tuple[Any, ...], geometry: Any,
                 dicom_files: tuple[Path, ...]) -> list[str]:
    """The engine's findings for an image (one array per channel) and a model folder, as sentences."""
    array = np.stack([np.asarray(channel, dtype=np.float32) for channel in channels])
    volume = Volume(array=array, geometry=geometry, dicom_files=dicom_files)
    return [finding.message for finding in check_image(volume, model_dir)]


Subject = tuple[str, tuple[Any, ...]]


def subject(model_dir: Path | None, layers: list[Any]) -> Subject:
    """What a check is about: the model folder and the chosen images (layer, array, shape, file)."""
    return str(model_dir), tuple(
        (id(layer), id(getattr(layer, "data", None)), tuple(getattr(getattr(layer, "data", None), "shape", ())),
         str(getattr(layer, "metadata", {}).get("tilewise_source", ""))) for layer in layers)


class SuitabilityCheck(QObject):
    """Checks the chosen image against the chosen model; ``found(sentences)`` follows each :meth:`check` (an empty
    list: nothing to say). A check started before the last one is dropped when it ends.

    :meth:`label_result` writes the sentences into a finished result's metadata (at once when its check has ended,
    else when it ends: ``labelled(layer)`` then follows)."""

    found = Signal(list)
    labelled = Signal(object)  # a result layer whose META_FIT was written after it had been shown

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._task: BackgroundTask | None = None
        self._latest = 0
        self._subject: Subject = ("", ())
        self._known: tuple[Subject, list[str]] | None = None
        """(subject, sentences) of the last check that ended."""
        self._waiting: list[tuple[Any, Subject]] = []
        """(result layer, subject) to label when the check of that subject ends."""
        self.found.connect(self._remember)

    def label_result(self, layer: Any, model_dir: Path, layers: list[Any]) -> None:
        """Write into result ``layer``'s metadata what the check said of its image ``layers`` and ``model_dir``."""
        wanted = subject(model_dir, layers)
        if self._known is not None and self._known[0] == wanted:
            layer.metadata = {**layer.metadata, META_FIT: list(self._known[1])}
        elif self._subject == wanted:  # its check goes on: label it when it ends
            self._waiting.append((layer, wanted))

    def _remember(self, sentences: list[str]) -> None:
        self._known = (self._subject, list(sentences))
        waiting, self._waiting = self._waiting, []
        for layer, wanted in waiting:
            if wanted == self._subject:
                layer.metadata = {**layer.metadata, META_FIT: list(sentences)}
                self.labelled.emit(layer)

    def check(self, model_dir: Path | None, layers: list[Any]) -> None:
        """Check image ``layers`` (one per model channel) against ``model_dir``; nothing to check clears the words."""
        wanted = subject(model_dir, layers)
        if wanted == self._subject:  # checked already, or being checked (the layer list changed, not the image)
            return
        self._latest += 1
        self._subject = wanted
        self._known = None
        if model_dir is None or not layers or any(layer is None for layer in layers):
            self.found.emit([])
            return
        dicom_files = tuple(Path(p) for p in layers[0].metadata.get("tilewise_dicom_files", []))
        task = BackgroundTask(findings_for, Path(model_dir), tuple(layer.data for layer in layers),
                              geometry_from_layer(layers[0]), dicom_files)
        number, owner = self._latest, weakref.ref(self)  # weak: a check never keeps a closed panel alive

        def done(sentences: list[str]) -> None:
            check = owner()
            if check is not None and alive(check) and number == check._latest:  # Qt may have deleted it meanwhile
                check.found.emit(list(sentences))

        task.succeeded.connect(done)
        task.failed.connect(lambda _message: done([]))  # the run itself reports a broken model
        self._task = task
        task.start()

    def shutdown(self) -> None:
        """Wait for a check in progress (the window is closing); its result is not reported."""
        self._latest += 1
        self._subject = ("", ())
        task, self._task = self._task, None
        if task is not None:
            task.wait(10_000)

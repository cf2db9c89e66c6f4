"""Reusing the last preprocessed input: a second run of the same image with the same model skips preprocessing.

What nnU-Net's preprocessing of a case depends on is the image (its voxels, geometry and source files), the model's
plans (configuration, normalisation, target spacing, intensity statistics, channels: not its labels), the image reader
the model names, and whether nnU-Net's own preprocessor class runs. Folds, mirroring, tile step, precision, batch
size and backend do not change it, so a run with another preset can take the previous run's network-grid data as it
is.

A :class:`PreprocessCache` keeps one entry (the last input), keyed by :func:`preprocess_key`: the image is identified by
a digest of its voxels, so an image edited in place, or another image at the same place in memory, never matches.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..data.volume import Volume
from ..model.bundle import ModelBundle
from .pipeline import Preprocessed

DIGEST_BYTES = 16


@dataclass(frozen=True)
class PreprocessKey:
    """What determines one preprocessed input; equal keys give equal network-grid data."""

    model: str
    """A digest of the model's plans, dataset description and configuration name."""
    image: str
    """A digest of the image's voxels, shape, geometry and source paths."""
    reader: str
    nnunet_code: bool


def image_digest(volume: Volume) -> str:
    """A digest of ``volume``'s voxels (every byte), shape, dtype, geometry and source paths."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    header = (tuple(volume.array.shape), str(volume.array.dtype), repr(volume.geometry),
              tuple(str(s) for s in volume.sources))
    digest.update(repr(header).encode())
    for channel in volume.array:  # one channel at a time: at most one channel's copy if the array is not contiguous
        digest.update(memoryview(channel.copy(order="C") if not channel.flags.c_contiguous else channel).cast("B"))
    return digest.hexdigest()


def model_digest(bundle: ModelBundle) -> str:
    """A digest of what in ``bundle`` shapes preprocessing. With nnU-Net's ``DefaultPreprocessor``: the configuration's
    settings (spacing, normalisation, resampling, tile), the transposition, the intensity statistics and the
    channels, which is all it reads without a segmentation; models trained on the same images for other labels
    (TotalSegmentator's parts) then share one preprocessed image. Any other preprocessor class: the whole plans and
    dataset description."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    manager, plans, dataset = bundle.configuration_manager, bundle.plans, bundle.dataset_json
    if manager.preprocessor_class is DefaultPreprocessor:
        parts: list[object] = [manager.configuration, plans.get("transpose_forward"),
                               plans.get("foreground_intensity_properties_per_channel"),
                               dataset.get("channel_names") or dataset.get("modality")]
    else:
        parts = [plans, dataset]
    text = json.dumps([*parts, bundle.configuration_name], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).hexdigest()


def preprocess_key(volume: Volume, bundle: ModelBundle, reader: str, nnunet_code: bool) -> PreprocessKey:
    """The key of ``volume`` preprocessed for ``bundle`` (read as ``reader`` reads it; nnU-Net's own preprocessor
    class when ``nnunet_code``)."""
    return PreprocessKey(model=model_digest(bundle), image=image_digest(volume), reader=reader,
                         nnunet_code=nnunet_code)


class PreprocessCache:
    """The last preprocessed input, for the next run of the same image and model (thread-safe; one entry).

    ``hits`` and ``misses`` count the lookups of :meth:`get_or_prepare`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: PreprocessKey | None = None
        self._value: Preprocessed | None = None
        self.hits = 0
        self.misses = 0

    def get_or_prepare(self, key: PreprocessKey, prepare: Callable[[], Preprocessed]) -> Preprocessed:
        """The entry for ``key``, else ``prepare()`` (on the calling thread), kept as the one entry.

        The previous entry is dropped before ``prepare`` runs, so at most one preprocessed input is held (plus the
        one being made). Each caller gets its own copy of the properties dictionary; the tensors are shared and
        never written to by a run.
        """
        with self._lock:
            if self._key == key and self._value is not None:
                self.hits += 1
                return _shared(self._value)
            self.misses += 1
            self._key, self._value = None, None
        value = prepare()  # outside the lock: a slow step, and cancellable (it raises, leaving the cache empty)
        with self._lock:
            self._key, self._value = key, value
        return _shared(value)

    def clear(self) -> None:
        """Drop the entry (its memory is freed once no run uses it)."""
        with self._lock:
            self._key, self._value = None, None


def _shared(value: Preprocessed) -> Preprocessed:
    """``value`` with a private copy of its (small) properties dictionary, which export code reads."""
    return replace(value, properties=copy.deepcopy(value.properties))

"""The sliding-window loop: batches of tiles x mirrors x folds, Gaussian-weighted accumulation, events, cancel."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..backends import ForwardBackend
from ..errors import Cancelled, OutOfMemoryError
from ..preprocess.grid_mapping import GridMapper
from ..runtime.memory import available_host_bytes, free_device_memory, is_out_of_memory
from ..events import Box, CancelToken, EventHandler, TileEvent
from .plan import Tile, gaussian_importance, plan_tiles
from .order import TileQueue, centre_out


LabelConverter = Callable[[torch.Tensor], torch.Tensor]


def background_logits(num_heads: int, regions: bool) -> torch.Tensor:
    """Logits that every label rule reads as background: softmax picks head 0, sigmoid regions are all off."""
    values = torch.full((num_heads,), -10.0)
    if not regions:
        values[0] = 10.0
    return values


class SlidingWindowRunner:
    """Runs every tile of one preprocessed case through a forward backend and accumulates logits.

    The backend forwards a batch of tiles through every fold and mirror. The order of tiles (centre-out, or as
    :meth:`prioritise` asks) does not change the result. ``skip_tile`` (optional) names tiles not to run at all;
    voxels that no run tile covers get ``background_logits`` (see :func:`background_logits`).
    """

    def __init__(
        self,
        backend: ForwardBackend,
        patch_size: tuple[int, ...],
        tile_step: float,
        batch_size: int,
        num_heads: int,
        to_labels: LabelConverter,
        background: torch.Tensor | None = None,
        skip_tile: Callable[[Tile], bool] | None = None,
    ) -> None:
        self.backend = backend
        self.device = backend.device
        self.patch_size = tuple(patch_size)
        self.tile_step = tile_step
        self.batch_size = max(1, batch_size)
        self.num_heads = num_heads
        self.to_labels = to_labels
        self.background = background
        self.skip_tile = skip_tile
        self.notes: list[str] = []
        self.tiles_run = 0
        self.tiles_skipped = 0
        self._queue: TileQueue | None = None
        self._pending_priority: Callable[[Tile], float] | None = None

    @property
    def passes_per_tile(self) -> int:
        """Forward passes per tile: (1 + mirrors) x folds."""
        return self.backend.passes_per_tile

    def prioritise(self, key: Callable[[Tile], float]) -> None:
        """Run the remaining tiles in order of ``key`` (smaller first). Safe to call from another thread."""
        self._pending_priority = key
        if self._queue is not None:
            self._queue.prioritise(key)

    def run(
        self,
        data: torch.Tensor,
        mapper: GridMapper,
        on_event: EventHandler | None = None,
        cancel: CancelToken | None = None,
        provisional_labels: bool = False,
    ) -> torch.Tensor:
        """Predict ``data`` (channels, z, y, x; already padded to at least one tile).

        Returns the Gaussian-averaged logits (heads, z, y, x) in float32. Raises :class:`Cancelled` if ``cancel``
        is set; device memory is freed before it propagates.
        """
        on_device = True
        while True:
            try:
                return self._run_once(data, mapper, on_event, cancel, provisional_labels, on_device)
            except Cancelled:
                free_device_memory(self.device)
                raise
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                free_device_memory(self.device)
                if on_device and self.device.type != "cpu":
                    on_device = False
                    self.notes.append("device memory ran out: accumulators moved to host memory and the run restarted")
                elif self.batch_size > 1:
                    self.batch_size //= 2
                    self.notes.append(f"memory ran out: batch size reduced to {self.batch_size} and the run restarted")
                else:
                    raise OutOfMemoryError(
                        str(self.device), "out of memory even at batch size 1 with accumulators in host memory"
                    ) from None

    def _accumulator_placement(self, shape: tuple[int, ...], on_device: bool) -> tuple[torch.device, torch.dtype]:
        voxels = int(np.prod(shape))
        needed32 = (self.num_heads + 1) * voxels * 4
        if on_device and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if needed32 < 0.6 * free:
                return self.device, torch.float32
            if needed32 / 2 < 0.6 * free:
                self.notes.append("accumulators kept on the device in float16 to fit its memory")
                return self.device, torch.float16
            on_device = False
        host = self.device if on_device else torch.device("cpu")
        if needed32 < 0.7 * available_host_bytes():
            return host, torch.float32
        self.notes.append("accumulators kept in float16 to fit host memory")
        return host, torch.float16

    def _run_once(
        self,
        data: torch.Tensor,
        mapper: GridMapper,
        on_event: EventHandler | None,
        cancel: CancelToken | None,
        provisional_labels: bool,
        on_device: bool,
    ) -> torch.Tensor:
        spatial = tuple(int(s) for s in data.shape[1:])
        result_device, result_dtype = self._accumulator_placement(spatial, on_device)
        tiles = centre_out(plan_tiles(spatial, self.patch_size, self.tile_step), spatial)  # type: ignore[arg-type]
        planned = len(tiles)
        if self.skip_tile is not None:
            tiles = [tile for tile in tiles if not self.skip_tile(tile)]
        self.tiles_run, self.tiles_skipped = len(tiles), planned - len(tiles)
        self._queue = TileQueue(tiles)
        if self._pending_priority is not None:
            self._queue.prioritise(self._pending_priority)
        logits = torch.zeros((self.num_heads, *spatial), dtype=result_dtype, device=result_device)
        weights = torch.zeros(spatial, dtype=result_dtype, device=result_device)
        gaussian = gaussian_importance(self.patch_size, self.device)
        gaussian_here = gaussian.to(result_device)
        data = data.to(self.device)
        is_2d = len(self.patch_size) == 2
        total, done, started = len(tiles), 0, time.perf_counter()
        with torch.inference_mode():
            while len(self._queue):
                if cancel is not None and cancel.cancelled:
                    del logits, weights, data
                    raise Cancelled()
                batch = self._queue.take(self.batch_size)
                inputs = torch.stack([data[(slice(None), *self._network_slice(t.box, is_2d))] for t in batch])
                predictions = self.backend(inputs).to(result_device)
                for tile, prediction in zip(batch, predictions):
                    region = self._network_slice(tile.box, is_2d)
                    logits[(slice(None), *region)] += (prediction * gaussian_here).to(result_dtype)
                    weights[region] += gaussian_here.to(result_dtype)
                for tile in batch:
                    done += 1
                    if on_event is not None:
                        elapsed = time.perf_counter() - started
                        on_event(self._event(tile, logits, mapper, done, total, elapsed, provisional_labels))
        self._queue = None
        if self.tiles_skipped:
            self._fill_uncovered(logits, weights)
        logits /= weights
        if result_dtype != torch.float32:
            logits = logits.float()
        if torch.isinf(logits).any():
            raise RuntimeError("non-finite logits after accumulation")
        return logits

    @staticmethod
    def _network_slice(box: Box, is_2d: bool) -> tuple[int | slice, ...]:
        return (box[0].start, box[1], box[2]) if is_2d else box

    def _fill_uncovered(self, logits: torch.Tensor, weights: torch.Tensor) -> None:
        """Give voxels that no tile covered the background logits (weight 1), so they read as background."""
        uncovered = weights == 0
        if not bool(uncovered.any()):
            return
        background = self.background if self.background is not None else background_logits(self.num_heads, False)
        for head in range(self.num_heads):
            logits[head][uncovered] = float(background[head])
        weights[uncovered] = 1

    def _event(
        self,
        tile: Tile,
        logits: torch.Tensor,
        mapper: GridMapper,
        done: int,
        total: int,
        elapsed: float,
        provisional_labels: bool,
    ) -> TileEvent:
        input_box = mapper.input_box(tile.box)
        labels = None
        if provisional_labels and input_box is not None:
            region = self.to_labels(logits[(slice(None), *tile.box)].float()).cpu().numpy()
            labels = mapper.labels_to_input(region, tile.box, input_box)
        eta = elapsed / done * (total - done)
        return TileEvent(done, total, tile.index, tile.box, input_box, labels, elapsed, eta)

"""A run's progress in napari's activity panel (the bar at the bottom right), next to the dock's own bar.

It is a napari ``progress`` object (a tqdm bar that the activity panel shows), updated from the GUI thread only.
Setting its value makes napari process pending events, so :class:`ActivityProgress` only records what to show and
:meth:`ActivityProgress.apply` (called from a timer, never from inside a worker signal) hands it to napari; a
:meth:`~ActivityProgress.close` that arrives while napari processes events takes effect as soon as it returns.
Its Cancel button cancels the run, which matters when the Tilewise panel is hidden.

napari also shows an animated "in progress" indicator in its status bar while a bar exists. In a window with an
OpenGL canvas every frame of that animation makes Qt compose the whole window again; with software OpenGL (virtual
machines, remote desktops) that took a fifth to a third of a run's time in our measurements. The indicator therefore
stays shown but still while a Tilewise bar is open (napari animates it again for the next bar it adds).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from napari.utils.progress import cancelable_progress, progress

from .._compat import busy_indicator

COUNT_INTERVAL_S = 0.5


class _CancellableBar(cancelable_progress):
    """napari's cancellable bar calls its callback only when it wraps a loop; this one calls it on Cancel."""

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


def still_busy_indicator(viewer: Any) -> None:
    """Stop the animation of napari's 'in progress' indicator; it stays shown, as a still image."""
    indicator = busy_indicator(viewer)
    movie = indicator.movie() if indicator is not None else None
    if movie is not None:
        movie.stop()


class ActivityProgress:
    """One bar in napari's activity panel: busy, or steps done of a total; closed exactly once."""

    def __init__(self, description: str, on_cancel: Callable[[], None] | None = None, unit: str = "tile",
                 viewer: Any = None) -> None:
        self.description = description
        self.viewer = viewer
        self.done = 0
        self.total = 0  # 0: busy (indeterminate)
        self.bar: progress | None = None
        self.closed = False
        self._on_cancel = on_cancel
        self._unit = unit
        self._applying = False
        self._applied_at = 0.0

    def set_progress(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` at the next :meth:`apply`."""
        self.done, self.total = int(done), int(total)

    def shown_count(self) -> tuple[int, int] | None:
        """(done, total) as napari's bar shows it now; None while it shows no count (not made yet, or busy)."""
        bar = self.bar
        if bar is None or not bar.total:
            return None
        return int(bar.n), int(bar.total)

    def set_busy(self, description: str) -> None:
        """Show a busy bar with ``description`` at the next :meth:`apply`."""
        self.description, self.total = description, 0

    def apply(self) -> bool:
        """Show the recorded state in napari's activity panel (creating the bar the first time).

        A new count is shown at most every ``COUNT_INTERVAL_S`` (napari processes events and repaints at each
        update); False when this one waits: apply again later.
        """
        if self.closed or self._applying:
            return True
        bar = self.bar
        if (bar is not None and bar.desc == self.description and bar.total == self.total
                and time.monotonic() - self._applied_at < COUNT_INTERVAL_S):
            return bar.n == self.done or not self.total
        self._applying = True
        try:
            self._applied_at = time.monotonic()
            if bar is None:
                bar = self.bar = _CancellableBar(desc=self.description, total=None, unit=self._unit,
                                                 cancel_callback=self._on_cancel)
                still_busy_indicator(self.viewer)
            if bar.desc != self.description:
                bar.set_description(self.description)
            if bar.total != self.total:
                bar.total = self.total
            if self.total and bar.n != self.done:
                bar.update(self.done - bar.n)
        finally:
            self._applying = False
        if self.closed:  # closed while napari processed events inside the calls above
            self._close_bar()
        return True

    def close(self) -> None:
        """Remove the bar from the activity panel (now, or when :meth:`apply` returns)."""
        self.closed = True
        if not self._applying:
            self._close_bar()

    def _close_bar(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.close()

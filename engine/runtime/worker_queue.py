"""Handing work to a thread of one's own through a bounded queue, and stopping that thread (the streaming export
and the label file's writer both do it)."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

Item = TypeVar("Item")


def hand_over(work: queue.Queue[Item], item: Item, raise_error: Callable[[], None]) -> None:
    """Put ``item`` on ``work``, waiting while it is full; ``raise_error`` runs before each try (why: a worker that
    failed stops taking items, and its error is the one to raise, not a wait for ever)."""
    while True:
        raise_error()
        try:
            work.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def stop_worker(work: queue.Queue, thread: threading.Thread) -> None:
    """Hand ``thread`` the None that ends it (unless it has ended already) and wait for it."""
    while thread.is_alive():
        try:
            work.put(None, timeout=0.1)
            break
        except queue.Full:
            continue
    thread.join()

"""Silencing libraries from several threads at once never leaves stdout or file descriptor 2 swapped."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from tilewise.engine.runtime.quiet import silenced_fd2, silenced_stdout


def _state() -> tuple:
    status = os.fstat(2)
    return sys.stdout, (status.st_dev, status.st_ino)


@pytest.mark.parametrize("silence", [silenced_stdout, silenced_fd2], ids=["stdout", "fd2"])
def test_a_second_thread_waits_instead_of_saving_the_first_ones_sink(silence) -> None:
    """The interleaving that breaks a bare redirection: B swaps while A is inside, and A leaves first."""
    before = _state()
    a_inside, b_starting = threading.Event(), threading.Event()

    def first() -> None:
        with silence():
            a_inside.set()
            b_starting.wait(5)
            time.sleep(0.2)  # B tries to swap now

    def second() -> None:
        a_inside.wait(5)
        b_starting.set()
        with silence():
            time.sleep(0.4)  # leaves after A

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _state() == before

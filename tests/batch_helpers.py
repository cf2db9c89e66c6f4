"""What the batch tests share: leftovers in an output folder, and a batch interrupted with Ctrl-C after its first
case. Not a test module: test modules import from here, never from each other."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tilewise.engine.batch.claims import CLAIMS_DIR


def leftovers(folder: Path) -> list[str]:
    """Staging folders and other hidden or temporary entries (the claims folder is the batch's own record); a claim
    still held (a '*.claim' of a running case, not a done one) is a leftover too."""
    names = sorted(p.name for p in folder.iterdir()
                   if (p.name.startswith(".") or "tmp" in p.name.lower()) and p.name != CLAIMS_DIR)
    claims = folder / CLAIMS_DIR
    if claims.is_dir():
        names += [f"{CLAIMS_DIR}/{p.name}" for p in claims.iterdir()
                  if not p.name.endswith(".claim") or json.loads(p.read_text(encoding="utf-8"))["state"] != "done"]
    return names


def spawn(argv: list) -> subprocess.Popen:
    """``tilewise argv`` as a child process, stderr piped (one line per finished case: it is not a terminal)."""
    # A shell that starts CI in the background makes its children ignore SIGINT; a terminal's Ctrl-C never is: the
    # child restores Python's handler itself (no preexec_fn: this process has threads).
    script = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              f"sys.argv = ['tilewise', *{[str(a) for a in argv]!r}]; "
              "runpy.run_module('tilewise.engine', run_name='__main__')")
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def signal_after(argv: list, marker: str, signum: int, timeout: float = 300) -> tuple[int, str]:
    """Run ``tilewise argv``, send ``signum`` once a stderr line holds ``marker``; (exit status, stderr)."""
    with spawn(argv) as process:
        try:
            lines = []
            for line in process.stderr:  # type: ignore[union-attr]
                lines.append(line)
                if marker in line:
                    break
            assert process.poll() is None, "".join(lines)
            process.send_signal(signum)
            rest = process.stderr.read()  # type: ignore[union-attr]
            code = process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return code, "".join(lines) + rest


def interrupt_after_first_case(argv: list[str]) -> tuple[int, str]:
    """Run ``tilewise argv`` (a 6-case batch) in a child process, press Ctrl-C once its first case has finished;
    its exit status and stderr."""
    return signal_after(argv, "[1/6]", signal.SIGINT, timeout=120)

"""The glibc allocator tuning used for CPU inference can be switched on, and off by environment variable."""
from __future__ import annotations

import subprocess
import sys

CODE = "from tilewise.engine.runtime.allocator import keep_freed_host_memory as k; print(k(), k())"


def test_tuning_applies_once_and_stays() -> None:
    assert subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split() == ["True", "True"]


def test_environment_variable_disables_it() -> None:
    env = {"TILEWISE_KEEP_HOST_MEMORY": "0", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "False"]


def test_only_the_command_line_tunes_the_allocator() -> None:
    """A host application (the viewer, a notebook) that runs the engine keeps its allocator as it is."""
    code = ("import tilewise.engine.runtime.allocator as a; from tilewise.engine import Predictor, get_preset; "
            "Predictor('demo', get_preset('preview').with_overrides(backend='torch'), device='cpu'); "
            "print(a._applied); from tilewise.engine.commands.cli import main; "
            "main(['predict', '-i', '/nonexistent.nii.gz', '-o', '/tmp/x', '-m', 'demo']); print(a._applied)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]

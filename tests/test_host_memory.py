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


TRIM_CODE = """
import numpy as np
from tilewise.engine.runtime.allocator import keep_freed_host_memory, return_freed_host_memory

def resident_mb():
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmRSS')) // 1024

keep_freed_host_memory()
image = np.ones(400 * 2**20, dtype=np.uint8)  # a case's image, let go after preprocessing
held = resident_mb()
del image
kept = resident_mb()
return_freed_host_memory()
print(held, kept, resident_mb())
"""


def test_freed_memory_kept_by_the_tuning_is_handed_back_between_stages() -> None:
    held, kept, returned = map(int, subprocess.run([sys.executable, "-c", TRIM_CODE], capture_output=True, text=True,
                                                    check=True).stdout.split())
    assert kept > held - 50, "the tuning keeps freed memory"
    assert returned < kept - 350, "malloc_trim hands the image's pages back"


RETURNING_CODE = """
import numpy as np
from tilewise.engine.runtime.allocator import keep_freed_host_memory, returning_large_blocks

def resident_mb():
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmRSS')) // 1024

keep_freed_host_memory()
with returning_large_blocks():  # reading and preprocessing: their copies go back to the system when freed
    image = np.ones(400 * 2**20, dtype=np.uint8)
    held = resident_mb()
    del image
    inside = resident_mb()
tile = np.ones(400 * 2**20, dtype=np.uint8)  # the tiles: kept for the next pass
del tile
print(held, inside, resident_mb())
"""


def test_large_blocks_of_loading_reading_and_preprocessing_go_back_at_once() -> None:
    held, inside, after = map(int, subprocess.run([sys.executable, "-c", RETURNING_CODE], capture_output=True,
                                                  text=True, check=True).stdout.split())
    assert inside < held - 350, "inside the block a freed large array is returned at once"
    assert after > inside + 350, "outside it the tuning keeps freed memory again"

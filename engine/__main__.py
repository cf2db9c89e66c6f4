"""``python -m tilewise.engine``: the ``tilewise`` command without its console script."""
import os

from .commands.cli import console

os.environ.setdefault("PYTHONUNBUFFERED", "1")
console()

"""The engine must run in batch jobs and Ray workers: importing it never pulls in Qt or napari."""
from __future__ import annotations

import subprocess
import sys


def test_engine_does_not_import_gui_libraries() -> None:
    code = (
        "import sys, tilewise.engine, tilewise.engine.commands.cli, tilewise.engine.commands.bench, tilewise.engine.commands.predict\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'PySide6', 'PyQt5', 'PyQt6', 'qtpy', 'superqt', 'magicgui', 'vispy', 'tilewise.gui'} "
        "or m.startswith('tilewise.gui'))\n"
        "print(','.join(bad))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == ""

"""Which model folders the person trusted: their checkpoints may be fully unpickled (which can run code)."""
from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject, QSettings, Signal

SETTINGS_TRUSTED = "models/trusted"


class TrustStore(QObject):
    """The trusted model folders, remembered in QSettings across sessions."""

    trusted = Signal(str)  # a model folder that has just been trusted

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings

    def _folders(self) -> list[str]:
        value = self.settings.value(SETTINGS_TRUSTED, [])
        return [value] if isinstance(value, str) else list(value or [])

    def is_trusted(self, model_dir: Path) -> bool:
        """True when checkpoints in ``model_dir`` may be fully unpickled."""
        return str(model_dir) in self._folders()

    def trust(self, model_dir: Path) -> None:
        """Remember that checkpoints in ``model_dir`` may be fully unpickled."""
        trusted = self._folders()
        if str(model_dir) not in trusted:
            self.settings.setValue(SETTINGS_TRUSTED, trusted + [str(model_dir)])
            self.trusted.emit(str(model_dir))

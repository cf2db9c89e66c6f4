"""The dock's five steps, as one object the flows read choices from and show results on."""
from __future__ import annotations

from dataclasses import dataclass

from .image import ImagePanel
from .model import ModelPanel
from .review import ReviewPanel
from .run import RunPanel
from .speed import SpeedPanel


@dataclass(frozen=True)
class DockPanels:
    """1. Model, 2. Image, 3. Speed and quality, 4. Segment (Run, progress), 5. Review and save."""

    model: ModelPanel
    image: ImagePanel
    speed: SpeedPanel
    run: RunPanel
    review: ReviewPanel

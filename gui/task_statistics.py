"""TotalSegmentator's statistics of a task's result as the review table shows them: each structure's volume (mL) and
mean intensity (HU for CT), as its own ``get_basic_statistics`` computed them during the run.

They describe the labels as the run left them: once the labels are edited, the volume is the edited voxels' again
(as for any result) and the mean intensity is not shown (it is not measured again). TotalSegmentator does not
measure a structure that touches the image's edge (it is cut off there, so its volume would be too small): such a
structure says so instead of a volume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .layers import META_COUNTS
from .task_models import META_RUN_COUNTS, META_STATISTICS, META_TASK
from .volumes import format_ml

CUT_OFF_TEXT = "cut off"
CUT_OFF_TIP = ("TotalSegmentator does not measure a structure that touches the image's edge: it is cut off there, so "
               "its volume and mean intensity would be wrong.")
EDITED_TIP = ("Edited: TotalSegmentator's mean intensity describes the labels as the run left them; it is not "
              "measured again after edits.")

Cell = tuple[str, str]
"""(text, tooltip) of one cell of the table."""


@dataclass(frozen=True)
class TaskStatistics:
    """The statistics a task's result carries, and whether they still describe its labels."""

    task: str
    values: dict[str, dict[str, float]]
    current: bool
    """False once the labels were edited (their voxel counts differ from the run's)."""

    @classmethod
    def of(cls, layer: Any) -> TaskStatistics | None:
        """The statistics of result ``layer`` (None for a result without any: not a task's run)."""
        metadata = getattr(layer, "metadata", None) or {}
        values = metadata.get(META_STATISTICS)
        if not values:
            return None
        current = metadata.get(META_COUNTS) == metadata.get(META_RUN_COUNTS)
        return cls(str(metadata.get(META_TASK, "")), dict(values), current)

    @property
    def is_mr(self) -> bool:
        """An MR task ('totalseg:total_mr'): its intensities have no unit."""
        return self.task.split(" ")[0].endswith("_mr")

    @property
    def fast(self) -> bool:
        """Computed on the 3 mm image the fast model ran on (as TotalSegmentator reports them with --fast)."""
        return self.task.endswith("--fast")

    def header(self) -> str:
        """The mean intensity column's title (its cells are plain numbers: the dock is narrow)."""
        return "Mean" if self.is_mr else "Mean<br>HU"  # two short lines: the names keep the width

    def mean(self, name: str) -> Cell:
        """Structure ``name``'s mean intensity cell."""
        stats = self.values.get(name)
        if not self.current:
            return "–", EDITED_TIP
        if stats is None or float(stats.get("volume", 0.0)) == 0.0:
            return "–", "Not found" if stats is not None else "Not measured"
        value = float(stats["intensity"])
        text = f"{value:.4g}" if self.is_mr else f"{value:.0f}"
        unit = " (MR intensities have no unit)" if self.is_mr else " HU"
        return text, f"TotalSegmentator's mean intensity of {name}: {value:g}{unit}"

    def volume(self, name: str, voxels: int) -> Cell | None:
        """Structure ``name``'s volume cell from the statistics (``voxels``: its voxels in the result); None once the
        labels were edited (the volume is then counted from the voxels)."""
        stats = self.values.get(name)
        if not self.current or stats is None:
            return None
        mm3 = float(stats.get("volume", 0.0))
        if mm3 == 0.0 and voxels > 0:
            return CUT_OFF_TEXT, CUT_OFF_TIP
        return format_ml(mm3 / 1000.0), f"TotalSegmentator's volume of {name}: {mm3:,.1f} mm³"

    def method(self) -> str:
        """Where the numbers come from, under the table."""
        grid = "the 3 mm image the fast model ran on" if self.fast else "the image's own grid"
        if not self.current:
            return ("Edited: volumes are the edited labels' voxels × the voxel volume; TotalSegmentator's mean "
                    "intensities are not measured again after edits.")
        return (f"Volume and mean intensity: TotalSegmentator's own statistics ({self.task}), on {grid}. A structure "
                "that touches the image's edge is cut off and not measured.")

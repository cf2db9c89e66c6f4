"""How labels are shown: one colour per label value (the engine's, shared by the model description, the review panel,
the labels layers and the DICOM outputs) and their names in plain words."""
from __future__ import annotations

from collections.abc import Collection

from tilewise.engine import label_color

__all__ = ["display_name", "label_color", "labels_colormap"]


def display_name(name: str) -> str:
    """A dataset.json label name for people: 'grey_matter' -> 'grey matter'."""
    return name.replace("_", " ").strip() or name


def _rgba(hex_colour: str, alpha: float = 1.0) -> list[float]:
    return [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)] + [alpha]


def labels_colormap(values: list[int], hidden: Collection[int] = ()):
    """A napari colormap that draws each of ``values`` in :func:`label_color` and leaves 0 transparent.

    Labels in ``hidden`` are fully transparent too: that is how the review panel hides single labels (napari's own
    ``show_selected_label`` shows only one label at a time).
    """
    from napari.utils.colormaps import DirectLabelColormap

    colours = {0: [0.0, 0.0, 0.0, 0.0], None: [1.0, 1.0, 1.0, 1.0]}
    colours.update({int(v): _rgba(label_color(int(v)), 0.0 if int(v) in hidden else 1.0)
                    for v in values if int(v) > 0})
    return DirectLabelColormap(color_dict=colours)

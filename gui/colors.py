"""How labels are shown: one colour per label value (shared by the model description, the review panel and the
labels layers) and their names in plain words."""
from __future__ import annotations

import colorsys
from collections.abc import Collection

# Distinct colours that stay readable over a grey-scale image (after Sasha Trubetskoy's list of 20).
_PALETTE: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
    "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1",
    "#000075", "#808080",
)


def display_name(name: str) -> str:
    """A dataset.json label name for people: 'grey_matter' -> 'grey matter'."""
    return name.replace("_", " ").strip() or name


def label_color(value: int) -> str:
    """Hex colour of label ``value`` (0, the background, is never drawn)."""
    if value <= 0:
        return "#000000"
    if value <= len(_PALETTE):
        return _PALETTE[value - 1]
    hue = (value * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}"


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

"""One colour per label value, shared by the viewer's layers and the DICOM outputs' recommended display colours."""
from __future__ import annotations

import colorsys

PALETTE: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
    "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1",
    "#000075", "#808080",
)
"""Distinct colours that stay readable over a grey-scale image (after Sasha Trubetskoy's list of 20)."""


def label_color(value: int) -> str:
    """Hex colour ('#rrggbb') of label ``value``: the palette for the first 20, golden-ratio hues beyond (0, the
    background, is black and never drawn)."""
    if value <= 0:
        return "#000000"
    if value <= len(PALETTE):
        return PALETTE[value - 1]
    hue = (value * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}"


def label_rgb(value: int) -> tuple[int, int, int]:
    """:func:`label_color` as 8-bit (red, green, blue)."""
    hex_colour = label_color(value)
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)

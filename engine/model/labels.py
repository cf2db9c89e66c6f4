"""The one rule for what a model's outputs are called: label value -> name, from ``dataset.json`` alone.

It follows nnunetv2's ``LabelManager``: a model is region-based when a label maps to a list of more than one value;
its output heads are the label entries other than 'ignore' and all-background ones, in order, and head ``i`` paints
``regions_class_order[i]``. Otherwise each integer label value is one class; 'ignore' is never predicted.
"""
from __future__ import annotations

from typing import Any


def is_region_based(dataset_json: dict[str, Any]) -> bool:
    """nnU-Net's rule: some label maps to a list (or tuple) of more than one value."""
    return any(isinstance(v, (list, tuple)) and len(v) > 1 for v in dataset_json.get("labels", {}).values())


def region_heads(dataset_json: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """Region-based models: (name, label values) per output head, in head order; empty for other models."""
    if not is_region_based(dataset_json):
        return []
    entries = [(str(name), [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])])
               for name, value in dataset_json["labels"].items()]
    return [(name, values) for name, values in entries if name != "ignore" and any(values)]


def label_names(dataset_json: dict[str, Any]) -> dict[int, str]:
    """Output label value -> name, background (0) included; region models: the values of regions_class_order."""
    labels = dataset_json.get("labels", {})
    if is_region_based(dataset_json):
        order = dataset_json.get("regions_class_order") or []
        return {0: "background", **{int(value): name for (name, _), value in zip(region_heads(dataset_json), order)}}
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and k != "ignore"}

"""``tilewise --self-test``: prove that this installation segments correctly, headless, in seconds.

Loads the bundled demo model, segments the bundled sample with the ``preview`` preset, and compares the labels with
the stored output of the ``reference`` preset (Dice per label) and the geometry with the input's. Prints the device,
the versions of everything that matters and the timings. Used after ``pip install``, inside the frozen app and by
the Windows installer's CI.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

from .metrics import dice_per_label

MIN_DICE = 0.90
"""Lowest Dice per label against the reference output that passes (preview measures about 0.97)."""
REPORTED_PACKAGES: tuple[str, ...] = ("tilewise", "torch", "nnunetv2", "numpy", "SimpleITK", "openvino")


class SelfTestFailure(Exception):
    """The installation does not work; the message says why in one line."""


def package_versions() -> dict[str, str]:
    """Installed versions of the packages Tilewise depends on ('not installed' where absent)."""
    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import torch

    versions["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda else torch.__version__
    return versions


def run_self_test(argv: Sequence[str]) -> int:
    """Run the self-test; prints a report and returns 0 if it passed, 1 (with the reason) if not."""
    parser = argparse.ArgumentParser(prog="tilewise --self-test", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default=None, help="forward-pass engine")
    args = parser.parse_args(list(argv))
    try:
        _check(args.device, args.backend)
    except SelfTestFailure as failure:
        print(f"self-test FAILED: {failure}", file=sys.stderr)
        return 1
    print("self-test passed")
    return 0


def _check(device: str, backend: str | None) -> None:
    started = time.perf_counter()
    for name, version in package_versions().items():
        print(f"{name:>10}: {version}")
    override = os.environ.get("TILEWISE_TORCH_OVERRIDE")
    if override:  # set by the installed app when it found a torch the user added (installer/README.md)
        print(f"{'torch from':>10}: {override}")
    try:
        from tilewise.resources import demo_model_dir, reference_labels_path, sample_path

        from ..runtime.devices import describe_device
        from ..errors import TilewiseError
        from ..data.readers import read_volume
        from ..predictor import Predictor
        from ..presets import get_preset
    except ImportError as error:
        raise SelfTestFailure(f"Tilewise is incompletely installed: {error}") from None
    for path in (demo_model_dir(), sample_path(), reference_labels_path()):
        if not path.exists():
            raise SelfTestFailure(f"{path}: bundled file is missing; reinstall Tilewise")
    try:
        preset = get_preset("preview").with_overrides(backend=backend)
        predictor = Predictor(demo_model_dir(), preset, device=device)
        print(f"{'device':>10}: {describe_device(predictor.device)}")
        print(f"{'backend':>10}: {predictor.backend.describe()}")
        volume = read_volume(sample_path())
        reference = read_volume(reference_labels_path())
        result = predictor.predict(volume)
    except TilewiseError as error:
        raise SelfTestFailure(str(error)) from None
    if result.labels.shape != volume.shape or not result.geometry.same_as(reference.geometry):
        raise SelfTestFailure(f"output grid {result.labels.shape} or geometry differs from the input's {volume.shape}")
    expected = reference.array[0].astype(np.int64)
    values = [int(v) for v in predictor.bundle.label_manager.foreground_labels]
    scores = dice_per_label(result.labels.astype(np.int64), expected, values)
    names = {int(v): k for k, v in predictor.bundle.dataset_json["labels"].items() if isinstance(v, int)}
    print(f"{'dice':>10}: " + ", ".join(f"{names.get(v, v)} {d:.3f}" for v, d in scores.items())
          + f" (against the reference preset; pass >= {MIN_DICE})")
    stages = ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in result.timings.items())
    print(f"{'timing':>10}: {stages}; {result.tiles} tiles ({result.tiles_skipped} skipped); "
          f"total {time.perf_counter() - started:.1f}s")
    failed = {v: d for v, d in scores.items() if d < MIN_DICE}
    if failed:
        worst = min(failed, key=failed.__getitem__)
        raise SelfTestFailure(f"label '{names.get(worst, worst)}' has Dice {failed[worst]:.3f} against the stored "
                              f"reference (needs >= {MIN_DICE}): this installation computes wrong results")

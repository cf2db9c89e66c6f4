"""``tilewise`` / ``tilewise PATH``: the Tilewise viewer, a napari window with the Tilewise dock widget."""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

TITLE = "Tilewise"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments of the viewer."""
    parser = argparse.ArgumentParser(prog="tilewise", description="Open the Tilewise viewer.")
    parser.add_argument("paths", nargs="*", help="an image file or DICOM folder to open (several files: one per "
                                                 "channel of the same scan)")
    parser.add_argument("-m", "--model", help="a trained nnU-Net model folder to select")
    return parser.parse_args(list(argv) if argv is not None else None)


def build_viewer(args: argparse.Namespace, viewer: Any = None, show: bool = True) -> tuple[Any, Any]:
    """A napari viewer titled Tilewise with the dock widget; opens the given image (else the sample, if installed)
    on a reading thread: the window shows at once and the image appears when it has been read.

    ``viewer`` reuses an existing napari viewer (tests pass one); otherwise a new one is made.
    """
    import napari

    from . import _compat, contributions
    from .widget import TilewiseWidget

    if viewer is None:
        viewer = napari.Viewer(title=TITLE, show=False)
    viewer.title = TITLE
    widget = TilewiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name=TITLE, area="right")
    widget.planes.set_shown(True)  # axial, coronal and sagittal side by side; napari as a plugin keeps one canvas
    if show:
        _compat.show_maximized(viewer)
    if args.model:  # 'demo' means the bundled model here too, as in every sub-command
        from tilewise.engine import resolve_model_dir

        widget.model_panel.select(resolve_model_dir(args.model))
    if args.paths:
        widget.open_image(args.paths[0] if len(args.paths) == 1 else args.paths)
    elif (sample := contributions.sample_path()) is not None:
        widget.open_image(sample)
    return viewer, widget


def main(argv: Sequence[str] | None = None) -> int:
    """Open the viewer and run until its window is closed."""
    args = parse_args(argv)
    os.environ.setdefault("QT_API", "pyside6")
    from ._preload import preload_native_libraries

    preload_native_libraries()  # before napari creates an OpenGL context
    import napari

    build_viewer(args)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

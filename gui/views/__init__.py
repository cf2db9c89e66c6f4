"""The views beside napari's canvas: axial, coronal and sagittal side by side with a linked crosshair."""
from .three_planes import ThreePlanes

__all__ = ["ThreePlanes"]

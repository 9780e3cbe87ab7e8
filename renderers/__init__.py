"""Gaussian splatting: gsplat on CUDA, a fast CPU backend, a dense reference, cameras and .ply."""

from .camera import Camera, orbit_cameras
from .compositing import composite_over, paste_back
from .gaussians import Gaussians
from .ply import read_ply, write_ply, write_splat
from .rasterize import RenderOutput, rasterize

__all__ = [
    "Camera",
    "Gaussians",
    "RenderOutput",
    "composite_over",
    "orbit_cameras",
    "paste_back",
    "rasterize",
    "read_ply",
    "write_ply",
    "write_splat",
]

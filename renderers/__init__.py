"""Gaussian splatting: gsplat on CUDA, a fast CPU backend, a dense reference, cameras and .ply.

Importing it loads no numba and changes no global setting: the CPU kernels load on first use
(see renderers.parallel).
"""

from .camera import Camera, orbit_cameras
from .compositing import FramePaster, composite_over, paste_back, paste_weight
from .gaussians import Gaussians
from .parallel import PARALLEL_LOCK, load_numba
from .ply import encode_ply, encode_splat, read_ply
from .rasterize import RenderOutput, rasterize

__all__ = [
    "PARALLEL_LOCK",
    "Camera",
    "FramePaster",
    "Gaussians",
    "RenderOutput",
    "composite_over",
    "load_numba",
    "orbit_cameras",
    "paste_back",
    "paste_weight",
    "rasterize",
    "encode_ply",
    "encode_splat",
    "read_ply",
]

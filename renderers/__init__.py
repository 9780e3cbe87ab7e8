"""Gaussian splatting: gsplat on CUDA, a fast CPU backend, a dense reference, cameras and .ply."""

import os

import numba

# numba's OpenMP layer keeps its threads spinning after each parallel kernel, which starves torch's own
# OpenMP threads between renders (posing Gaussians got 10x slower on a busy 2-core machine); the plain
# work-queue pool sleeps instead. A user's own NUMBA_THREADING_LAYER wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

from .camera import Camera, orbit_cameras
from .compositing import FramePaster, composite_over, paste_back, paste_weight
from .gaussians import Gaussians
from .ply import read_ply, write_ply, write_splat
from .rasterize import RenderOutput, rasterize

__all__ = [
    "Camera",
    "FramePaster",
    "Gaussians",
    "RenderOutput",
    "composite_over",
    "orbit_cameras",
    "paste_back",
    "paste_weight",
    "rasterize",
    "read_ply",
    "write_ply",
    "write_splat",
]

"""Gaussian splatting: gsplat on CUDA, a fast CPU backend, a dense reference, cameras and .ply."""

"""Triangle-mesh z-buffer rasteriser: which triangle covers each pixel, where on it, and how far.

Used to bind Gaussians to the surface seen by a portrait's pixels and for visibility tests; it is
not a shaded renderer. Numba kernel with a pure-numpy twin (`_rasterize_mesh_numpy`) for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .parallel import load_numba

numba = load_numba()


@dataclass
class MeshFragments:
    """Per-pixel result of `rasterize_mesh`."""

    triangle: np.ndarray  # [H, W] int32 index of the nearest covering triangle, -1 where none
    barycentric: np.ndarray  # [H, W, 3] float32 weights of that triangle's corners (perspective-correct)
    depth: np.ndarray  # [H, W] float32 camera-space depth, inf where none


@numba.njit(cache=True, nogil=True)
def _raster_kernel(xy, z, triangles, width, height, cull_back, tri_out, bary_out, depth_out):
    for t in range(triangles.shape[0]):
        i0, i1, i2 = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        z0, z1, z2 = z[i0], z[i1], z[i2]
        if z0 <= 0 or z1 <= 0 or z2 <= 0:  # behind or on the camera plane: skip the whole triangle
            continue
        x0, y0 = xy[i0, 0], xy[i0, 1]
        x1, y1 = xy[i1, 0], xy[i1, 1]
        x2, y2 = xy[i2, 0], xy[i2, 1]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0.0:
            continue
        # In image coordinates (y down) a triangle that is counter-clockwise in the world has area < 0.
        if cull_back and area > 0:
            continue
        xmin = max(int(np.floor(min(x0, x1, x2))), 0)
        xmax = min(int(np.ceil(max(x0, x1, x2))), width - 1)
        ymin = max(int(np.floor(min(y0, y1, y2))), 0)
        ymax = min(int(np.ceil(max(y0, y1, y2))), height - 1)
        inv_area = 1.0 / area
        for py in range(ymin, ymax + 1):
            cy = py + 0.5
            for px in range(xmin, xmax + 1):
                cx = px + 0.5
                w0 = ((x1 - cx) * (y2 - cy) - (x2 - cx) * (y1 - cy)) * inv_area
                w1 = ((x2 - cx) * (y0 - cy) - (x0 - cx) * (y2 - cy)) * inv_area
                w2 = 1.0 - w0 - w1
                if w0 < 0 or w1 < 0 or w2 < 0:
                    continue
                # Perspective-correct interpolation: weights over depth, renormalised.
                p0, p1, p2 = w0 / z0, w1 / z1, w2 / z2
                norm = p0 + p1 + p2
                depth = 1.0 / norm
                if depth < depth_out[py, px]:
                    depth_out[py, px] = depth
                    tri_out[py, px] = t
                    bary_out[py, px, 0] = p0 / norm
                    bary_out[py, px, 1] = p1 / norm
                    bary_out[py, px, 2] = p2 / norm


def rasterize_mesh(
    points: np.ndarray,  # [V, 3] pixel x, pixel y, camera depth (> 0 in front of the camera)
    triangles: np.ndarray,  # [T, 3] vertex indices
    width: int,
    height: int,
    cull_back: bool = False,
) -> MeshFragments:
    """Nearest triangle per pixel centre (x + 0.5, y + 0.5), with perspective-correct barycentrics."""
    points = np.ascontiguousarray(points, np.float64)
    triangles = np.ascontiguousarray(triangles, np.int64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [V, 3], got {points.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must be [T, 3], got {triangles.shape}")
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(points)):
        raise ValueError("triangle indices out of range")
    if not np.all(np.isfinite(points)):
        raise ValueError("mesh points contain NaN or inf")
    tri = np.full((height, width), -1, np.int32)
    bary = np.zeros((height, width, 3), np.float32)
    depth = np.full((height, width), np.inf, np.float32)
    _raster_kernel(points[:, :2], points[:, 2], triangles, width, height, cull_back, tri, bary, depth)
    return MeshFragments(tri, bary, depth)


def _rasterize_mesh_numpy(points, triangles, width, height) -> MeshFragments:
    """Slow, obviously correct twin of `rasterize_mesh` (every pixel against every triangle)."""
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = xs + 0.5, ys + 0.5
    tri_out = np.full((height, width), -1, np.int32)
    bary_out = np.zeros((height, width, 3), np.float32)
    depth_out = np.full((height, width), np.inf, np.float32)
    for t, (i0, i1, i2) in enumerate(triangles):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = points[i0], points[i1], points[i2]
        if min(z0, z1, z2) <= 0:
            continue
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0:
            continue
        w0 = ((x1 - cx) * (y2 - cy) - (x2 - cx) * (y1 - cy)) / area
        w1 = ((x2 - cx) * (y0 - cy) - (x0 - cx) * (y2 - cy)) / area
        w2 = 1 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        p = np.stack([w0 / z0, w1 / z1, w2 / z2], -1)
        depth = 1 / p.sum(-1)
        closer = inside & (depth < depth_out)
        depth_out[closer] = depth[closer]
        tri_out[closer] = t
        bary_out[closer] = (p * depth[..., None])[closer]
    return MeshFragments(tri_out, bary_out, depth_out)

"""Gaussians tiling a mesh's surface: each triangle cut into m × m similar sub-triangles, one Gaussian each.

Every Gaussian sits at its sub-triangle's centroid, shaped like the sub-triangle (its second moment) and
flat along the normal; m per triangle follows a density budget. Gaussians along the open edges close the
gap the tiling leaves there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models.mesh_binding import MeshBinding, triangle_frames

#: Largest subdivision of one triangle (m × m Gaussians).
MAX_SUBDIVISION = 8


def _subdivision_pattern(m: int) -> np.ndarray:
    """Barycentrics [m², 3] of the centroids of the m × m similar sub-triangles of a triangle."""
    points = []
    for i in range(m):
        for j in range(m - i):
            points.append(((i + 1 / 3) / m, (j + 1 / 3) / m))  # upright sub-triangles
            if i + j <= m - 2:
                points.append(((i + 2 / 3) / m, (j + 2 / 3) / m))  # the inverted ones between them
    ab = np.array(points)
    return np.column_stack([1 - ab.sum(1), ab[:, 0], ab[:, 1]])


def _allocate(areas: np.ndarray, density: np.ndarray, target: int) -> np.ndarray:
    """Subdivision m [T] per triangle so that Σ m² is close to `target` with m² ∝ density · area."""
    want = density * areas
    if target <= len(areas):
        return np.ones(len(areas), np.int64)
    lo, hi = 0.0, 1.0
    while (np.clip(np.rint(np.sqrt(hi * want)), 1, MAX_SUBDIVISION) ** 2).sum() < target and hi < 1e12:
        hi *= 2.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        count = (np.clip(np.rint(np.sqrt(mid * want)), 1, MAX_SUBDIVISION) ** 2).sum()
        lo, hi = (mid, hi) if count < target else (lo, mid)
    return np.clip(np.rint(np.sqrt(hi * want)), 1, MAX_SUBDIVISION).astype(np.int64)


def surface_binding(
    vertices: Tensor,  # [V, 3] rest mesh, cm
    triangles: Tensor,  # [T, 3]
    chosen: Tensor,  # [C] triangles to cover
    density: Tensor,  # [C] relative density per cm²
    num_gaussians: int,
    overlap: float = 2.5,
    thickness: float = 0.3,
) -> MeshBinding:
    """About `num_gaussians` Gaussians tiling the chosen triangles, one per sub-triangle of an m × m grid,
    each shaped like its sub-triangle (covariance of a uniform triangle, times `overlap`²)."""
    frames, size = triangle_frames(vertices, triangles[chosen])
    corners = vertices[triangles[chosen]]  # [C, 3, 3]
    # Corners in the triangle's own 2D frame, in triangle-size units (MeshBinding's units).
    local = ((corners - corners[:, :1]) @ frames[:, :, :2]) / size[:, None, None]  # [C, 3, 2]
    centred = local - local.mean(1, keepdim=True)
    # A uniform triangle's covariance is Σ d_i d_iᵀ / 12 over its corners' offsets from the centroid.
    cov = centred.transpose(1, 2) @ centred / 12.0  # [C, 2, 2]
    eigval, eigvec = torch.linalg.eigh(cov.double())
    eigval, eigvec = eigval.clamp_min(1e-12).float(), eigvec.float()
    angle = torch.atan2(eigvec[:, 1, 1], eigvec[:, 0, 1])  # direction of the major axis
    half = 0.5 * angle
    turn = torch.stack([half.cos(), torch.zeros_like(half), torch.zeros_like(half), half.sin()], -1)
    minor, major = eigval[:, 0].sqrt(), eigval[:, 1].sqrt()

    areas = (0.5 * size**2).numpy()
    m = _allocate(areas, density.numpy().astype(np.float64), num_gaussians)
    tri_idx, bary, sub = [], [], []
    for k in np.unique(m):
        rows = np.nonzero(m == k)[0]
        pattern = _subdivision_pattern(int(k))
        tri_idx.append(np.repeat(rows, len(pattern)))
        bary.append(np.tile(pattern, (len(rows), 1)))
        sub.append(np.full(len(rows) * len(pattern), k))
    rows = torch.from_numpy(np.concatenate(tri_idx))
    per = torch.from_numpy(np.concatenate(sub)).float()
    s_major = overlap * major[rows] / per
    s_minor = overlap * minor[rows] / per
    scale = torch.stack([s_major, s_minor, thickness * s_minor], -1)
    return MeshBinding(
        chosen[rows],
        torch.from_numpy(np.concatenate(bary)).float(),
        torch.zeros(len(rows)),
        turn[rows].contiguous(),
        scale,
    )


def rim_binding(
    vertices: Tensor,  # [V, 3] rest mesh, cm
    triangles: Tensor,  # [T, 3]
    chosen: Tensor,  # [C] the covered triangles
    per_edge: int = 3,
    width: float = 0.5,
) -> MeshBinding:
    """Gaussians along the open edges of the covered surface (the neck's base, the eye and mouth
    openings): the tiling's Gaussians sit inside their triangles, so without these an open edge seen
    from the side would fade out before the mesh ends. `width` is the in-plane sigma relative to the
    spacing along the edge."""
    tri = triangles[chosen].numpy()
    local = np.array([[0, 1], [1, 2], [2, 0]])
    edges = np.sort(tri[:, local], axis=2).reshape(-1, 2)  # [3C, 2]
    _, inverse, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    open_edge = np.nonzero(counts[inverse.ravel()] == 1)[0]
    owner, which = open_edge // 3, open_edge % 3
    frac = (np.arange(per_edge) + 0.5) / per_edge
    bary = np.zeros((len(owner), per_edge, 3), np.float32)
    rows = np.arange(len(owner))[:, None]
    bary[rows, :, local[which, 0][:, None]] = 1.0 - frac
    bary[rows, :, local[which, 1][:, None]] = frac
    owner_t = torch.from_numpy(np.repeat(chosen.numpy()[owner], per_edge))
    frames, size = triangle_frames(vertices, triangles[owner_t])
    a = vertices[triangles[owner_t, torch.from_numpy(np.repeat(local[which, 0], per_edge))]]
    b = vertices[triangles[owner_t, torch.from_numpy(np.repeat(local[which, 1], per_edge))]]
    sigma = width * (a - b).norm(dim=-1) / per_edge / size  # triangle-size units
    identity_rot = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(owner_t), 4).contiguous()
    return MeshBinding(
        owner_t,
        torch.from_numpy(bary.reshape(-1, 3)),
        torch.zeros(len(owner_t)),
        identity_rot,
        torch.stack([sigma, sigma, 0.3 * sigma], -1),
    )

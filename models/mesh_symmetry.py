"""Mirror images on the ICT head, which is exactly symmetric in x: each vertex and surface point has one."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from models.head_model import HeadModel


def mirror_vertices(head: HeadModel) -> np.ndarray:
    """Index [V] of each vertex's mirror image (x → −x) on the neutral ICT mesh (exactly symmetric)."""
    neutral = head.neutral.cpu().numpy()
    dist, idx = cKDTree(neutral).query(neutral * np.array([-1.0, 1.0, 1.0], np.float32))
    assert np.percentile(dist, 99) < 1e-3, "the head model is expected to be symmetric in x"
    return idx


def mirror_points(head: HeadModel, triangle: Tensor, barycentric: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The mirror triangle [N], barycentrics [N, 3] of points on `triangle` [N], and whether one exists [N]."""
    tris = head.triangles.cpu().numpy()
    mv = mirror_vertices(head)
    nv = np.int64(len(mv))

    def key(t: np.ndarray) -> np.ndarray:
        s = np.sort(t, axis=1)
        return (s[:, 0] * nv + s[:, 1]) * nv + s[:, 2]

    all_keys = key(tris)
    order = np.argsort(all_keys)
    mirrored = mv[tris[triangle.cpu().numpy()]]  # [N, 3] mirror of each corner
    pos = np.clip(np.searchsorted(all_keys[order], key(mirrored)), 0, len(order) - 1)
    found = all_keys[order][pos] == key(mirrored)
    mirror_tri = order[pos]
    # Corner j of the mirror triangle is the mirror of corner k of ours: carry the weight across.
    match = tris[mirror_tri][:, :, None] == mirrored[:, None, :]  # [N, 3 (theirs), 3 (ours)]
    bary = np.einsum("njk,nk->nj", match.astype(np.float32), barycentric.cpu().numpy())
    found &= match.sum((1, 2)) == 3
    # Quads are split along their 0-2 diagonal, which a mirrored quad may run the other way: there the
    # mirror point lies on one of the nearby triangles, found by its barycentrics on the neutral mesh.
    missing = np.nonzero(~found)[0]
    if len(missing):
        neutral = head.neutral.cpu().numpy().astype(np.float64)
        corners = neutral[tris[triangle.cpu().numpy()[missing]]]
        point = (barycentric.cpu().numpy()[missing, :, None] * corners).sum(1) * np.array([-1.0, 1.0, 1.0])
        centroids = neutral[tris].mean(1)
        _, near = cKDTree(centroids).query(point, k=8)  # [M, 8]
        cand = neutral[tris[near]]  # [M, 8, 3, 3]
        e1, e2 = cand[:, :, 1] - cand[:, :, 0], cand[:, :, 2] - cand[:, :, 0]
        d = point[:, None] - cand[:, :, 0]
        g11, g12, g22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
        r1, r2 = (d * e1).sum(-1), (d * e2).sum(-1)
        det = np.maximum(g11 * g22 - g12 * g12, 1e-18)
        u, v = (g22 * r1 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det
        cand_bary = np.stack([1 - u - v, u, v], -1)  # [M, 8, 3]
        dist = np.linalg.norm(d - u[..., None] * e1 - v[..., None] * e2, axis=-1)
        # Prefer a triangle that contains the point, then the one nearest to its plane.
        score = np.minimum(cand_bary.min(-1), 0.0) * 10.0 - dist
        best = score.argmax(1)
        rows = np.arange(len(missing))
        chosen_bary = np.clip(cand_bary[rows, best], 0.0, None)
        mirror_tri[missing] = near[rows, best]
        bary[missing] = chosen_bary / chosen_bary.sum(1, keepdims=True).clip(1e-12)
        found[missing] = (cand_bary[rows, best].min(1) > -0.05) & (dist[rows, best] < 0.05)
    return torch.from_numpy(mirror_tri), torch.from_numpy(bary.astype(np.float32)), torch.from_numpy(found)

"""Colours for a mesh from one photo: what the photo sees, and a smooth completion of what it does not.

The photo's colour of a point counts where a z-buffer says the photo sees it, weighted by the view angle
(grazing views give little confidence). A colour field on the mesh graph (a screened Laplacian) keeps
what the photo saw and diffuses it over the rest, pulled weakly towards a prior colour; smooth diffusion
makes the seam between photo and completion invisible. Hair and skin colours for the prior are
estimated from the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve

from models.photo_view import project_points
from renderers import Camera

#: The hair colour used when the photo shows too little hair.
FALLBACK_HAIR = (0.22, 0.17, 0.13)
#: The white of the eye where the photo does not show it (scaled by the photo's skin brightness).
SCLERA_RGB = (0.8, 0.76, 0.72)


@dataclass
class PhotoSamples:
    """Colours the photo gives points on the mesh, and how much to trust them."""

    rgb: np.ndarray  # [N, 3] in [0, 1]
    confidence: np.ndarray  # [N] 0 (unseen) .. 1 (seen head on)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def sample_photo(
    points: np.ndarray,  # [N, 3] world points on the photo-posed mesh, cm
    normals: np.ndarray,  # [N, 3] their outward unit normals
    crop: np.ndarray,  # [S, S, 3] float32 in [0, 1]
    camera: Camera,
    zbuffer: np.ndarray,  # [S, S] depth of the nearest surface, cm (inf where none)
    depth_tolerance_cm: float,  # how far behind the z-buffer a point may be and still count as seen
    grazing_cos: tuple[float, float],  # view-angle cosines between which confidence ramps from 0 to 1
) -> PhotoSamples:
    """Photo colours of points where the z-buffer says the photo sees them, weighted by view angle."""
    px = project_points(torch.from_numpy(points).float(), camera).numpy()
    x, y, z = px[:, 0], px[:, 1], px[:, 2]
    size = crop.shape[0]
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size) & (z > 0)
    col = np.clip(x.astype(np.int64), 0, size - 1)
    row = np.clip(y.astype(np.int64), 0, size - 1)
    seen = inside & (z <= zbuffer[row, col] + depth_tolerance_cm)
    eye = camera.position.numpy()
    view = eye - points
    view /= np.linalg.norm(view, axis=1, keepdims=True).clip(1e-9)
    cos = (normals * view).sum(1)
    conf = np.where(seen, _smoothstep(cos, *grazing_cos), 0.0).astype(np.float32)
    return PhotoSamples(_bilinear(crop, x - 0.5, y - 0.5), conf)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Image [H, W, C] at pixel-centre coordinates x, y [N] (edges replicated) → [N, C] float32."""
    h, w = image.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.minimum(x.astype(np.int64), w - 2)
    y0 = np.minimum(y.astype(np.int64), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def hair_weight(neutral: np.ndarray) -> np.ndarray:
    """How likely each scalp point [N, 3] (neutral ICT coordinates, cm) is hair rather than skin, 0..1.

    The hairline rises from the nape (y ≈ −3 cm at the back) to the top of the forehead (y ≈ 10 cm in
    front); ears and neck stay skin.
    """
    y, z = neutral[:, 1], neutral[:, 2]
    hairline = -3.0 + 13.0 * np.clip((z + 6.0) / 12.0, 0.0, 1.0)
    return _smoothstep(y - hairline, -1.0, 1.5)


def _mesh_laplacian(triangles: np.ndarray, num_vertices: int) -> sparse.csr_matrix:
    """Graph Laplacian [V, V] of the mesh's edges (uniform weights)."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    ones = np.ones(len(edges))
    adj = sparse.coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(num_vertices, num_vertices))
    adj = (adj + adj.T).tocsr()
    adj.data[:] = 1.0
    return (sparse.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()


def colour_field(
    vertices: np.ndarray,  # [V, 3] the mesh, cm
    triangles: np.ndarray,  # [T, 3] the triangles the field lives on
    data: np.ndarray,  # [V, 3] observed colours
    weight: np.ndarray,  # [V] their confidence per cm² (0 where unobserved)
    prior: np.ndarray,  # [V, 3] colour to fall back to far from any observation
    prior_weight: float,  # per cm²
    smoothness: float,
) -> np.ndarray:
    """Vertex colours [V, 3] minimising Σ_v a_v (w_v |c − data|² + p |c − prior|²) + s Σ_edges |c_u − c_v|².

    a_v is the vertex's share of the surface (cm²). Uniform edge weights approximate the cotangent
    Laplacian on a well-shaped mesh, whatever its resolution, so colours spread about sqrt(s / p) cm
    from what was observed before the prior takes over, on the fine face and the coarse scalp alike.
    """
    num_vertices = len(vertices)
    corners = vertices[triangles]
    area = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    vertex_area = np.bincount(triangles.ravel(), np.repeat(area / 3.0, 3), minlength=num_vertices)
    lap = _mesh_laplacian(triangles, num_vertices)
    diag = vertex_area * (weight + prior_weight)
    # Vertices off these triangles have no area: pin them to the prior so the system stays regular.
    unused = vertex_area <= 0
    system = (sparse.diags(diag + unused) + smoothness * lap).tocsc()
    rhs = (vertex_area * weight)[:, None] * data + (vertex_area * prior_weight + unused)[:, None] * prior
    return np.asarray(spsolve(system, rhs), np.float32).reshape(num_vertices, 3)


def robust_colour(rgb: np.ndarray, use: np.ndarray, fallback) -> np.ndarray:
    """Median colour [3] of the rows of rgb [N, 3] where `use`, or the fallback when under 20 rows."""
    if int(use.sum()) < 20:
        return np.asarray(fallback, np.float32)
    return np.median(rgb[use], axis=0).astype(np.float32)


def dominant_colour(rgb: np.ndarray, fallback, clusters: int = 3) -> np.ndarray:
    """The centre [3] of the largest of `clusters` k-means clusters of colours [N, 3] (hair, not the
    odd highlight, clip or background pixel), or the fallback when there are under 20 colours."""
    if len(rgb) < 20:
        return np.asarray(fallback, np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    cv2.setRNGSeed(0)
    _, labels, centres = cv2.kmeans(
        np.ascontiguousarray(rgb, np.float32), clusters, None, criteria, 2, cv2.KMEANS_PP_CENTERS
    )
    return centres[np.bincount(labels.ravel(), minlength=clusters).argmax()].astype(np.float32)


def pixels_above_head(crop: np.ndarray, head_mask: np.ndarray) -> np.ndarray:
    """Colours [N, 3] of a thin band just outside the top half of the head's silhouette in the crop."""
    size = head_mask.shape[0]
    band = max(2, int(0.02 * size))
    mask = head_mask.astype(np.uint8)
    grown = cv2.dilate(mask, np.ones((2 * band + 1, 2 * band + 1), np.uint8))
    rows = np.nonzero(mask.any(1))[0]
    ring = (grown > 0) & (mask == 0)
    if len(rows):
        top, bottom = rows[0], rows[-1]
        ring[int(top + 0.45 * (bottom - top)) :] = False  # above the ears only: below is collar and neck
    return crop[ring]

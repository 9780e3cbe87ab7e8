"""Gaussians bound to mesh triangles: deforming the mesh moves, turns and stretches them.

Each Gaussian sits at barycentric coordinates on one triangle, pushed out along the triangle normal;
its rotation and size are stored in the triangle's own frame (edge, in-plane perpendicular, normal)
and in units of the triangle's size (sqrt of twice its area), as in GaussianAvatars (Qian et al. 2024).
Shared by the portrait avatar (Talk) and the full 3D head (Avatar3D).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.transforms import matrix_to_quaternion, quaternion_multiply, quaternion_to_matrix
from renderers import PARALLEL_LOCK, load_numba

numba = load_numba()


def triangle_frames(vertices: Tensor, triangles: Tensor) -> tuple[Tensor, Tensor]:
    """Per-triangle frames [..., T, 3, 3] (columns: edge, in-plane perpendicular, normal) and sizes [..., T]."""
    tri = vertices[..., triangles, :]  # [..., T, 3, 3]
    edge1 = tri[..., 1, :] - tri[..., 0, :]
    edge2 = tri[..., 2, :] - tri[..., 0, :]
    cross = torch.linalg.cross(edge1, edge2, dim=-1)
    double_area = cross.norm(dim=-1)
    normal = cross / double_area[..., None].clamp_min(1e-12)
    tangent = edge1 / edge1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bitangent = torch.linalg.cross(normal, tangent, dim=-1)
    frames = torch.stack([tangent, bitangent, normal], dim=-1)
    return frames, double_area.clamp_min(1e-12).sqrt()


def surface_points(vertices: Tensor, triangles: Tensor, triangle: Tensor, barycentric: Tensor) -> Tensor:
    """Points [N, 3] at barycentric coordinates [N, 3] on triangles [N] (indices into `triangles` [T, 3])
    of a mesh [V, 3]."""
    return (barycentric[:, :, None] * vertices[triangles[triangle]]).sum(1)


def local_coordinates(
    vertices: Tensor, triangles: Tensor, triangle: Tensor, points: Tensor
) -> tuple[Tensor, Tensor]:
    """Barycentrics [N, 3] (outside [0, 1] off the triangle) and offsets along the normal [N] (cm) of
    points [N, 3] relative to triangles [N] of a mesh [V, 3]: `MeshBinding`'s terms for any point."""
    a, b, c = (vertices[triangles[triangle, i]] for i in range(3))
    e1, e2 = b - a, c - a
    normal = torch.nn.functional.normalize(torch.linalg.cross(e1, e2, dim=-1), dim=-1)
    d = points - a
    offset = (d * normal).sum(-1)
    d = d - offset[:, None] * normal
    d11, d12, d22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
    p1, p2 = (d * e1).sum(-1), (d * e2).sum(-1)
    det = (d11 * d22 - d12 * d12).clamp_min(1e-12)
    u = (d22 * p1 - d12 * p2) / det
    v = (d11 * p2 - d12 * p1) / det
    return torch.stack([1 - u - v, u, v], -1), offset


@dataclass
class MeshBinding:
    """Where N Gaussians sit on a mesh, in triangle-local terms (all tensors share one device)."""

    triangle: Tensor  # [N] long, triangle index
    barycentric: Tensor  # [N, 3] weights of the triangle's corners
    offset: Tensor  # [N] distance along the triangle normal, in triangle-size units
    rotation: Tensor  # [N, 4] wxyz, in the triangle frame
    scale: Tensor  # [N, 3] axis lengths (1 sigma), in triangle-size units

    #: The tensors above, in order (an avatar's state stores each as "binding.<field>").
    FIELDS = ("triangle", "barycentric", "offset", "rotation", "scale")

    def __len__(self) -> int:
        return int(self.triangle.shape[0])

    def to(self, device) -> MeshBinding:
        return MeshBinding(*(getattr(self, f).to(device) for f in self.FIELDS))

    def subset(self, index: Tensor) -> MeshBinding:
        return MeshBinding(*(getattr(self, f)[index] for f in self.FIELDS))

    @staticmethod
    def concatenate(bindings: list[MeshBinding]) -> MeshBinding:
        return MeshBinding(*(torch.cat([getattr(b, f) for b in bindings]) for f in MeshBinding.FIELDS))

    @classmethod
    def from_world(
        cls,
        vertices: Tensor,  # [V, 3] rest mesh
        triangles: Tensor,  # [T, 3]
        triangle: Tensor,  # [N] which triangle each Gaussian belongs to
        barycentric: Tensor,  # [N, 3]
        offset_cm: Tensor,  # [N] along the normal, cm
        rotation: Tensor,  # [N, 4] wxyz world rotation at rest
        scale_cm: Tensor,  # [N, 3] world axis lengths at rest, cm
        frames: tuple[Tensor, Tensor] | None = None,  # triangle_frames(vertices, triangles), if already known
    ) -> MeshBinding:
        """Bind Gaussians given in world terms on the rest mesh."""
        frames, size = frames if frames is not None else triangle_frames(vertices, triangles)
        frame, k = frames[triangle], size[triangle]
        local_rot = matrix_to_quaternion(frame.transpose(-1, -2) @ quaternion_to_matrix(rotation))
        return cls(triangle, barycentric, offset_cm / k, local_rot, scale_cm / k[:, None])

    def pose(self, vertices: Tensor, triangles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """World means [..., N, 3], wxyz rotations [..., N, 4] and scales [..., N, 3] on meshes [..., V, 3].

        One CPU mesh goes through a fused numba kernel; batches, CUDA tensors and autograd use the torch
        twin `pose_torch` (the kernel is tested against it).
        """
        if vertices.ndim == 2 and vertices.device.type == "cpu" and not vertices.requires_grad:
            return self._pose_numba(vertices, triangles)
        return self.pose_torch(vertices, triangles)

    def _pose_numba(self, vertices: Tensor, triangles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = len(self)
        means = np.empty((n, 3), np.float32)
        quats = np.empty((n, 4), np.float32)
        scales = np.empty((n, 3), np.float32)
        self.pose_into(vertices.detach().numpy(), triangles.numpy(), means, quats, scales)
        return torch.from_numpy(means), torch.from_numpy(quats), torch.from_numpy(scales)

    def pose_into(
        self,
        vertices: np.ndarray,
        triangles: np.ndarray,
        means: np.ndarray,
        quats: np.ndarray,
        scales: np.ndarray,
    ) -> None:
        """`pose` of one CPU mesh [V, 3] written into float32 arrays [N, 3], [N, 4], [N, 3] (e.g. row views)."""
        with PARALLEL_LOCK:
            _pose_kernel(
                vertices.astype(np.float32, copy=False),
                triangles,
                self.triangle.numpy(),
                self.barycentric.numpy().astype(np.float32, copy=False),
                self.offset.numpy().astype(np.float32, copy=False),
                self.rotation.numpy().astype(np.float32, copy=False),
                self.scale.numpy().astype(np.float32, copy=False),
                means,
                quats,
                scales,
            )

    def pose_torch(self, vertices: Tensor, triangles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The differentiable, batched torch version of `pose`."""
        # Frames and their quaternions are computed once per used triangle, then gathered per Gaussian.
        used, inverse = self._used_triangles()
        corners_idx = triangles[used]  # [U, 3]
        frames, size = triangle_frames(vertices, corners_idx)
        frame_quat = matrix_to_quaternion(frames)[..., inverse, :]  # [..., N, 4]
        normal = frames[..., 2][..., inverse, :]  # [..., N, 3]
        k = size[..., inverse]  # [..., N]
        corners = vertices[..., corners_idx[inverse], :]  # [..., N, 3, 3]
        surface = (self.barycentric[..., None] * corners).sum(-2)
        means = surface + normal * (self.offset * k)[..., None]
        rotation = quaternion_multiply(frame_quat, self.rotation)
        return means, rotation, self.scale * k[..., None]

    def _used_triangles(self) -> tuple[Tensor, Tensor]:
        cache = getattr(self, "_used_cache", None)
        if cache is None or cache[0] is not self.triangle:
            used, inverse = torch.unique(self.triangle, return_inverse=True)
            cache = (self.triangle, used, inverse)
            self._used_cache = cache
        return cache[1], cache[2]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _pose_kernel(
    vertices, triangles, tri, bary, offset, rot, scale, means, quats, scales
):  # pragma: no cover
    # Pass 1, per triangle: its frame as a quaternion, its unit normal and its size. Pass 2, per
    # Gaussian: gather those and compose (many Gaussians share a triangle).
    n_tri = triangles.shape[0]
    frame_q = np.empty((n_tri, 4), np.float32)
    normal = np.empty((n_tri, 3), np.float32)
    size = np.zeros(n_tri, np.float32)
    used = np.zeros(n_tri, np.bool_)
    for i in range(tri.shape[0]):
        used[tri[i]] = True
    for t in numba.prange(n_tri):
        if not used[t]:
            continue
        a, b, c = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        e1x, e1y, e1z = (
            vertices[b, 0] - vertices[a, 0],
            vertices[b, 1] - vertices[a, 1],
            vertices[b, 2] - vertices[a, 2],
        )
        e2x, e2y, e2z = (
            vertices[c, 0] - vertices[a, 0],
            vertices[c, 1] - vertices[a, 1],
            vertices[c, 2] - vertices[a, 2],
        )
        nx = e1y * e2z - e1z * e2y
        ny = e1z * e2x - e1x * e2z
        nz = e1x * e2y - e1y * e2x
        double_area = max(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)
        size[t] = np.sqrt(double_area)
        nx, ny, nz = nx / double_area, ny / double_area, nz / double_area
        normal[t, 0], normal[t, 1], normal[t, 2] = nx, ny, nz
        el = max(np.sqrt(e1x * e1x + e1y * e1y + e1z * e1z), 1e-12)
        tx, ty, tz = e1x / el, e1y / el, e1z / el
        bx, by, bz = ny * tz - nz * ty, nz * tx - nx * tz, nx * ty - ny * tx
        # Frame columns (t, b, n) as a quaternion (Shepperd: the largest of the four candidates).
        m00, m01, m02 = tx, bx, nx
        m10, m11, m12 = ty, by, ny
        m20, m21, m22 = tz, bz, nz
        trace = m00 + m11 + m22
        if trace > 0:
            s = np.sqrt(trace + 1.0) * 2.0
            qw, qx, qy, qz = 0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s
        elif m00 > m11 and m00 > m22:
            s = np.sqrt(1.0 + m00 - m11 - m22) * 2.0
            qw, qx, qy, qz = (m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s
        elif m11 > m22:
            s = np.sqrt(1.0 + m11 - m00 - m22) * 2.0
            qw, qx, qy, qz = (m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s
        else:
            s = np.sqrt(1.0 + m22 - m00 - m11) * 2.0
            qw, qx, qy, qz = (m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s
        frame_q[t, 0], frame_q[t, 1], frame_q[t, 2], frame_q[t, 3] = qw, qx, qy, qz
    for i in numba.prange(tri.shape[0]):
        t = tri[i]
        a, b, c = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        qw, qx, qy, qz = frame_q[t, 0], frame_q[t, 1], frame_q[t, 2], frame_q[t, 3]
        rw, rx, ry, rz = rot[i, 0], rot[i, 1], rot[i, 2], rot[i, 3]
        ow = qw * rw - qx * rx - qy * ry - qz * rz
        ox = qw * rx + qx * rw + qy * rz - qz * ry
        oy = qw * ry - qx * rz + qy * rw + qz * rx
        oz = qw * rz + qx * ry - qy * rx + qz * rw
        if ow < 0:  # one sign convention, so outputs compare with the torch twin
            ow, ox, oy, oz = -ow, -ox, -oy, -oz
        quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3] = ow, ox, oy, oz
        k = size[t]
        off = offset[i] * k
        w0, w1, w2 = bary[i, 0], bary[i, 1], bary[i, 2]
        for d in range(3):
            means[i, d] = w0 * vertices[a, d] + w1 * vertices[b, d] + w2 * vertices[c, d] + normal[t, d] * off
            scales[i, d] = scale[i, d] * k

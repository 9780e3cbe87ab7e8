"""Gaussians bound to mesh triangles: deforming the mesh moves, turns and stretches them.

Each Gaussian sits at barycentric coordinates on one triangle, pushed out along the triangle normal;
its rotation and size are stored in the triangle's own frame (edge, in-plane perpendicular, normal)
and in units of the triangle's size (sqrt of twice its area), as in GaussianAvatars (Qian et al. 2024).
Shared by the portrait avatar (Talk) and the full 3D head (Avatar3D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.transforms import matrix_to_quaternion, quaternion_multiply, quaternion_to_matrix


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


@dataclass
class MeshBinding:
    """Where N Gaussians sit on a mesh, in triangle-local terms (all tensors share one device)."""

    triangle: Tensor  # [N] long, triangle index
    barycentric: Tensor  # [N, 3] weights of the triangle's corners
    offset: Tensor  # [N] distance along the triangle normal, in triangle-size units
    rotation: Tensor  # [N, 4] wxyz, in the triangle frame
    scale: Tensor  # [N, 3] axis lengths (1 sigma), in triangle-size units

    def __len__(self) -> int:
        return int(self.triangle.shape[0])

    def to(self, device) -> MeshBinding:
        return MeshBinding(
            *(getattr(self, f).to(device) for f in ("triangle", "barycentric", "offset", "rotation", "scale"))
        )

    def subset(self, index: Tensor) -> MeshBinding:
        return MeshBinding(
            self.triangle[index],
            self.barycentric[index],
            self.offset[index],
            self.rotation[index],
            self.scale[index],
        )

    @staticmethod
    def concatenate(bindings: list[MeshBinding]) -> MeshBinding:
        fields = ("triangle", "barycentric", "offset", "rotation", "scale")
        return MeshBinding(*(torch.cat([getattr(b, f) for b in bindings]) for f in fields))

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
    ) -> MeshBinding:
        """Bind Gaussians given in world terms on the rest mesh."""
        frames, size = triangle_frames(vertices, triangles)
        frame, k = frames[triangle], size[triangle]
        local_rot = matrix_to_quaternion(frame.transpose(-1, -2) @ quaternion_to_matrix(rotation))
        return cls(triangle, barycentric, offset_cm / k, local_rot, scale_cm / k[:, None])

    def pose(self, vertices: Tensor, triangles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """World means [..., N, 3], wxyz rotations [..., N, 4] and scales [..., N, 3] on meshes [..., V, 3]."""
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

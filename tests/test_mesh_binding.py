"""Gaussians bound to triangles follow the mesh: rigid motions carry them exactly, stretching scales them."""

import torch

from models.mesh_binding import MeshBinding, triangle_frames
from models.transforms import euler_to_matrix, matrix_to_euler, matrix_to_quaternion, quaternion_to_matrix


def _sheet():
    gen = torch.Generator().manual_seed(0)
    vertices = torch.rand(30, 3, generator=gen) * 10
    triangles = torch.randint(0, 30, (40, 3), generator=gen)
    triangles = triangles[
        (triangles[:, 0] != triangles[:, 1])
        & (triangles[:, 1] != triangles[:, 2])
        & (triangles[:, 0] != triangles[:, 2])
    ]
    n = 200
    tri = torch.randint(0, len(triangles), (n,), generator=gen)
    bary = torch.rand(n, 3, generator=gen)
    bary = bary / bary.sum(-1, keepdim=True)
    rot = torch.randn(n, 4, generator=gen)
    rot = rot / rot.norm(dim=-1, keepdim=True)
    scale = torch.rand(n, 3, generator=gen) + 0.1
    offset = torch.randn(n, generator=gen) * 0.2
    return vertices, triangles, tri, bary, offset, rot, scale


def test_binding_at_rest_reproduces_the_world_gaussians():
    vertices, triangles, tri, bary, offset, rot, scale = _sheet()
    binding = MeshBinding.from_world(vertices, triangles, tri, bary, offset, rot, scale)
    means, rotation, scales = binding.pose(vertices, triangles)
    frames, _ = triangle_frames(vertices, triangles)
    surface = (bary[:, :, None] * vertices[triangles[tri]]).sum(1)
    torch.testing.assert_close(means, surface + frames[tri][:, :, 2] * offset[:, None], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        quaternion_to_matrix(rotation), quaternion_to_matrix(rot), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(scales, scale, atol=1e-4, rtol=1e-4)


def test_rigid_motion_of_the_mesh_moves_gaussians_rigidly_and_uniform_stretch_scales_them():
    vertices, triangles, tri, bary, offset, rot, scale = _sheet()
    binding = MeshBinding.from_world(vertices, triangles, tri, bary, offset, rot, scale)
    turn = euler_to_matrix(torch.tensor([0.3, -0.7, 0.2]))
    shift = torch.tensor([1.0, -2.0, 3.0])
    means0, rot0, scale0 = binding.pose(vertices, triangles)
    means1, rot1, scale1 = binding.pose(vertices @ turn.T + shift, triangles)
    torch.testing.assert_close(means1, means0 @ turn.T + shift, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(
        quaternion_to_matrix(rot1), turn @ quaternion_to_matrix(rot0), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(scale1, scale0, atol=1e-4, rtol=1e-4)
    _, _, scale2 = binding.pose(vertices * 2.0, triangles)
    torch.testing.assert_close(scale2, scale0 * 2.0, atol=1e-4, rtol=1e-4)
    # Batched meshes pose all frames at once.
    batch = torch.stack([vertices, vertices @ turn.T + shift])
    means_b, _, _ = binding.pose(batch, triangles)
    torch.testing.assert_close(means_b[1], means1, atol=1e-4, rtol=1e-4)


def test_rotation_helpers_invert_each_other():
    angles = torch.tensor([[0.3, -1.2, 0.5], [-0.8, 2.5, -2.9], [0.0, 0.0, 0.0]])
    matrix = euler_to_matrix(angles)
    torch.testing.assert_close(matrix_to_euler(matrix), angles, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        quaternion_to_matrix(matrix_to_quaternion(matrix)), matrix, atol=1e-5, rtol=1e-5
    )
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # 180° about x: the trace is -1, the hard case
    torch.testing.assert_close(quaternion_to_matrix(matrix_to_quaternion(flip)), flip, atol=1e-6, rtol=0)


def test_fused_cpu_kernel_matches_the_torch_twin():
    vertices, triangles, tri, bary, offset, rot, scale = _sheet()
    binding = MeshBinding.from_world(vertices, triangles, tri, bary, offset, rot, scale)
    deformed = vertices + torch.randn(vertices.shape, generator=torch.Generator().manual_seed(3)) * 0.5
    fast = binding.pose(deformed, triangles)
    slow = binding.pose_torch(deformed, triangles)
    torch.testing.assert_close(fast[0], slow[0], atol=1e-4, rtol=1e-4)
    # q and -q are the same rotation; compare as matrices.
    torch.testing.assert_close(
        quaternion_to_matrix(fast[1]), quaternion_to_matrix(slow[1]), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(fast[2], slow[2], atol=1e-4, rtol=1e-4)

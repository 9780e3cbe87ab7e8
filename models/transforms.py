"""The few 3D rotation helpers headsplat needs, in torch (no pytorch3d dependency), and head-pose algebra.

Head-pose angles are (pitch, yaw, roll) in radians: pitch about +x (nodding, positive looks down
with y up and the face along +z), yaw about +y (positive turns the face towards the subject's left,
+x), roll about +z. The matrix is R = Ry(yaw) @ Rx(pitch) @ Rz(roll).

A head pose is a rotation about the head's pivot and a translation in world cm; a motion's pose is
relative to a rest pose (the portrait's) and composes with it one way, `compose_pose`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _axis_rotation(angle: Tensor, axis: int) -> Tensor:
    """[...] angles → [..., 3, 3] right-handed rotations about x (0), y (1) or z (2)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = (one, zero, zero, zero, c, -s, zero, s, c)
    elif axis == 1:
        rows = (c, zero, s, zero, one, zero, -s, zero, c)
    else:
        rows = (c, -s, zero, s, c, zero, zero, zero, one)
    return torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)


def euler_to_matrix(angles: Tensor) -> Tensor:  # [..., 3] pitch, yaw, roll → [..., 3, 3]
    """Rotation matrices from head-pose angles (radians), R = Ry(yaw) Rx(pitch) Rz(roll)."""
    pitch, yaw, roll = angles.unbind(-1)
    return _axis_rotation(yaw, 1) @ _axis_rotation(pitch, 0) @ _axis_rotation(roll, 2)


def euler_to_matrix_and_derivatives(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`euler_to_matrix` of one angle triple [3] in float64 numpy, R [3, 3], with dR/d(pitch, yaw, roll)
    [3, 3, 3]: the analytic Jacobians of the face fitter."""
    pitch, yaw, roll = angles
    cp, sp, cy, sy, cr, sr = (
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
        math.cos(roll),
        math.sin(roll),
    )
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    drx = np.array([[0, 0, 0], [0, -sp, -cp], [0, cp, -sp]])
    dry = np.array([[-sy, 0, cy], [0, 0, 0], [-cy, 0, -sy]])
    drz = np.array([[-sr, -cr, 0], [cr, -sr, 0], [0, 0, 0]])
    return ry @ rx @ rz, np.stack([ry @ drx @ rz, dry @ rx @ rz, ry @ rx @ drz])


def matrix_to_euler(matrix: Tensor) -> Tensor:  # [..., 3, 3] → [..., 3]
    """Inverse of `euler_to_matrix` for |pitch| < 90°."""
    # With R = Ry Rx Rz: R[1,2] = -sin(pitch), R[0,2] = sin(yaw)cos(pitch), R[2,2] = cos(yaw)cos(pitch),
    # R[1,0] = cos(pitch)sin(roll), R[1,1] = cos(pitch)cos(roll).
    pitch = torch.asin((-matrix[..., 1, 2]).clamp(-1.0, 1.0))
    yaw = torch.atan2(matrix[..., 0, 2], matrix[..., 2, 2])
    roll = torch.atan2(matrix[..., 1, 0], matrix[..., 1, 1])
    return torch.stack([pitch, yaw, roll], dim=-1)


def quaternion_to_matrix(quats: Tensor) -> Tensor:  # [..., 4] wxyz → [..., 3, 3]
    """Rotation matrices from (not necessarily unit) wxyz quaternions."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:  # [..., 3, 3] → [..., 4] wxyz, w >= 0
    """Unit wxyz quaternions from rotation matrices (Shepperd's method, branch-free via the largest term)."""
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate solutions, each accurate when its leading component is the largest.
    cands = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - trace, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - trace, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - trace], -1),
        ],
        dim=-2,
    )  # fmt: skip
    lead = torch.stack(
        [1 + trace, 1 + 2 * m[..., 0, 0] - trace, 1 + 2 * m[..., 1, 1] - trace, 1 + 2 * m[..., 2, 2] - trace],
        -1,
    )
    best = lead.argmax(dim=-1, keepdim=True)
    q = torch.gather(cands, -2, best[..., None].expand(*best.shape, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:  # [..., 4] wxyz, [..., 4] wxyz → [..., 4]
    """Hamilton product a ⊗ b: the rotation b followed by a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def compose_pose(rest_rotation, rest_translation, rotation, translation) -> tuple[np.ndarray, np.ndarray]:
    """Absolute head pose from a rest pose and a relative one: R = R_rest · R_rel, t = t_rest + t_rel.

    Shapes: rest [3], relative [..., 3] (radians, cm); returns absolute [..., 3] pairs. The relative
    rotation turns the head about its own axes (a nod stays a nod on a turned head).
    """
    rest = euler_to_matrix(torch.as_tensor(np.asarray(rest_rotation, np.float64)))
    rel = euler_to_matrix(torch.as_tensor(np.asarray(rotation, np.float64)))
    absolute = matrix_to_euler(rest @ rel).numpy()
    return absolute.astype(np.float32), (np.asarray(rest_translation) + np.asarray(translation)).astype(
        np.float32
    )


def relative_pose(rest_rotation, rest_translation, rotation, translation) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `compose_pose`: the pose [..., 3] relative to a rest pose [3]."""
    rest = euler_to_matrix(torch.as_tensor(np.asarray(rest_rotation, np.float64)))
    absolute = euler_to_matrix(torch.as_tensor(np.asarray(rotation, np.float64)))
    rel = matrix_to_euler(rest.transpose(-1, -2) @ absolute).numpy()
    return rel.astype(np.float32), (np.asarray(translation) - np.asarray(rest_translation)).astype(np.float32)

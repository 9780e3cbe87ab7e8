"""numba kernels for a portrait avatar's frames on the CPU: the posed mesh and the rigid band, in parallel.

They compute what `PortraitAvatar.mesh` and the rigid part of `PortraitAvatar.gaussians` compute with
torch (the torch versions stay the reference, for CUDA and autograd; tests compare the two), but fused
into one pass each, spread over all cores, and written into arrays the caller owns.
"""

from __future__ import annotations

import numpy as np

from renderers import load_numba

numba = load_numba()

_BLOCK = 512  # vertices per parallel work item (their 53 expression rows stream through the cache once)


@numba.njit(parallel=True, cache=True)
def posed_mesh(
    id_shape,  # [V, 3] f32: neutral + identity offsets
    basis,  # [E, V * 3] f32: expression offsets
    weights,  # [E] f32: expression weights (rest + motion, clamped)
    vertex_w,  # [V] f32: how much of the head's turn and translation each vertex follows
    turn,  # [3, 3] f32: the motion's rotation (about the pivot)
    rest_rot,  # [3, 3] f32: the rest pose's rotation (about the pivot)
    pivot,  # [3] f32
    rest_t,  # [3] f32
    move_t,  # [3] f32: the motion's translation
    out,  # [V, 3] f32
):  # pragma: no cover - compiled
    """Posed vertices: x = shape - pivot; blended = w R_m x + (1 - w) x; out = R_0 blended + pivot + t_0 + w t_m."""
    n = id_shape.shape[0]
    e = basis.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(lo + _BLOCK, n)
        acc = np.empty((hi - lo) * 3, np.float32)
        for j in range(3 * lo, 3 * hi):
            acc[j - 3 * lo] = id_shape[j // 3, j % 3]
        for k in range(e):
            wk = weights[k]
            if wk != 0:
                row = basis[k]
                for j in range(3 * lo, 3 * hi):
                    acc[j - 3 * lo] += wk * row[j]
        for v in range(lo, hi):
            j = 3 * (v - lo)
            x0, x1, x2 = acc[j] - pivot[0], acc[j + 1] - pivot[1], acc[j + 2] - pivot[2]
            w = vertex_w[v]
            u = np.float32(1.0) - w
            b0 = w * (turn[0, 0] * x0 + turn[0, 1] * x1 + turn[0, 2] * x2) + u * x0
            b1 = w * (turn[1, 0] * x0 + turn[1, 1] * x1 + turn[1, 2] * x2) + u * x1
            b2 = w * (turn[2, 0] * x0 + turn[2, 1] * x1 + turn[2, 2] * x2) + u * x2
            for d in range(3):
                out[v, d] = (
                    rest_rot[d, 0] * b0 + rest_rot[d, 1] * b1 + rest_rot[d, 2] * b2
                    + pivot[d] + rest_t[d] + w * move_t[d]
                )  # fmt: skip


@numba.njit(parallel=True, cache=True)
def rigid_band(
    means,  # [N, 3] f32 rest positions
    quats,  # [N, 4] f32 rest rotations (wxyz)
    weights,  # [N] f32 share of the head's motion each follows
    rot,  # [3, 3] f32 world rotation of the moved head
    shift,  # [3] f32 world translation of the moved head
    turn,  # [4] f32 rot as a quaternion (wxyz)
    out_means,  # [N, 3] f32
    out_quats,  # [N, 4] f32
):  # pragma: no cover - compiled
    """Each Gaussian moves `weights` of the way from its rest pose to the head's rigid motion."""
    tw, tx, ty, tz = turn[0], turn[1], turn[2], turn[3]
    for i in numba.prange(means.shape[0]):
        w = weights[i]
        u = np.float32(1.0) - w
        m0, m1, m2 = means[i, 0], means[i, 1], means[i, 2]
        for d in range(3):
            moved = rot[d, 0] * m0 + rot[d, 1] * m1 + rot[d, 2] * m2 + shift[d]
            out_means[i, d] = u * means[i, d] + w * moved
        qw, qx, qy, qz = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        pw = tw * qw - tx * qx - ty * qy - tz * qz
        px = tw * qx + tx * qw + ty * qz - tz * qy
        py = tw * qy - tx * qz + ty * qw + tz * qx
        pz = tw * qz + tx * qy - ty * qx + tz * qw
        bw, bx, by, bz = u * qw + w * pw, u * qx + w * px, u * qy + w * py, u * qz + w * pz
        norm = max(np.sqrt(bw * bw + bx * bx + by * by + bz * bz), np.float32(1e-12))
        out_quats[i, 0], out_quats[i, 1], out_quats[i, 2], out_quats[i, 3] = (
            bw / norm,
            bx / norm,
            by / norm,
            bz / norm,
        )

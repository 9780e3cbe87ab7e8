"""The fast CPU backend: numba kernels for projection, depth sort, tile binning and compositing.

Same conventions as gsplat 1.5.3 and the dense reference in rasterize.py (see its module docstring):
projection in float64 rounded to float32 (so this backend and the reference see identical 2D Gaussians),
per-pixel arithmetic in float32 in gsplat's order. Not differentiable.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ._conventions import (
    ALPHA_MAX,
    ALPHA_MIN,
    EPS2D,
    EXP_COEFFS,
    EXP_S_MAX,
    EXP_SCALE,
    EXTEND_MAX,
    SKIP_MARGIN,
    T_MIN,
    TILE,
)
from .parallel import PARALLEL_LOCK, load_numba

numba = load_numba()
njit, prange = numba.njit, numba.prange


@njit(cache=True, inline="always")
def exp_neg(s):  # pragma: no cover - compiled
    """exp(-s) in float32 for s in [0, EXP_S_MAX] (see _conventions: a polynomial, then four squarings)."""
    c = EXP_COEFFS
    q = s * EXP_SCALE
    q2 = q * q
    q4 = q2 * q2
    p = (c[0] - q * c[1] + q2 * (c[2] - q * c[3])) + q4 * (c[4] - q * c[5] + q2 * (c[6] - q * c[7]))
    p = p * p
    p = p * p
    p = p * p
    return p * p


# Column layout of the per-Gaussian parameter table (one 48-byte row per Gaussian for cache locality).
P_MX, P_MY, P_CA, P_CB, P_CC, P_OP, P_R, P_G, P_B, P_Z = range(10)
N_PARAMS = 12  # two spare columns: rows of 48 bytes

_TILE_ORDERS: dict[int, np.ndarray] = {}


@njit(cache=True, inline="always")
def _sh_colour(coeffs, i, k, c, x, y, z):  # pragma: no cover - compiled
    xx, yy, zz = x * x, y * y, z * z
    v = 0.28209479177387814 * coeffs[i, 0, c]
    if k > 1:
        v += 0.4886025119029199 * (-y * coeffs[i, 1, c] + z * coeffs[i, 2, c] - x * coeffs[i, 3, c])
    if k > 4:
        v += (
            1.0925484305920792 * x * y * coeffs[i, 4, c]
            - 1.0925484305920792 * y * z * coeffs[i, 5, c]
            + 0.31539156525252005 * (2.0 * zz - xx - yy) * coeffs[i, 6, c]
            - 1.0925484305920792 * x * z * coeffs[i, 7, c]
            + 0.5462742152960396 * (xx - yy) * coeffs[i, 8, c]
        )
    if k > 9:
        v += (
            -0.5900435899266435 * y * (3.0 * xx - yy) * coeffs[i, 9, c]
            + 2.890611442640554 * x * y * z * coeffs[i, 10, c]
            - 0.4570457994644658 * y * (4.0 * zz - xx - yy) * coeffs[i, 11, c]
            + 0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * coeffs[i, 12, c]
            - 0.4570457994644658 * x * (4.0 * zz - xx - yy) * coeffs[i, 13, c]
            + 1.445305721320277 * z * (xx - yy) * coeffs[i, 14, c]
            - 0.5900435899266435 * x * (xx - 3.0 * yy) * coeffs[i, 15, c]
        )
    v += 0.5
    return v if v > 0.0 else 0.0


@njit(parallel=True, cache=True)
def _project(
    means,  # [N, 3] f32 world, cm
    quats,  # [N, 4] f32 wxyz, unit to float32 precision (renormalised here in float64)
    scales,  # [N, 3] f32 linear, cm
    opacities,  # [N] f32
    coeffs,  # [N, K, 3] f32: SH coefficients, or RGB with K = 1 when not is_sh
    is_sh,
    viewmat,  # [4, 4] f64 world -> camera
    campos,  # [3] f64 camera centre in world space
    fx,
    fy,
    cx,
    cy,
    width,
    height,
    near,
    far,
    eps2d,  # screen-space low-pass, pixels^2
    params,  # out [N, N_PARAMS] f32
    rects,  # out [N, 4] i32: first/last pixel column, first/last pixel row; empty when first > last
):  # pragma: no cover - compiled
    n = means.shape[0]
    k = coeffs.shape[1]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    alpha_min = np.float64(ALPHA_MIN)
    v = viewmat
    for i in prange(n):
        rects[i, 0] = 1
        rects[i, 1] = 0
        wx, wy, wz = np.float64(means[i, 0]), np.float64(means[i, 1]), np.float64(means[i, 2])
        x = v[0, 0] * wx + v[0, 1] * wy + v[0, 2] * wz + v[0, 3]
        y = v[1, 0] * wx + v[1, 1] * wy + v[1, 2] * wz + v[1, 3]
        z = v[2, 0] * wx + v[2, 1] * wy + v[2, 2] * wz + v[2, 3]
        if not (z >= near and z <= far):
            continue
        op = np.float64(opacities[i])
        if op < alpha_min:
            continue
        qw, qx, qy, qz = (
            np.float64(quats[i, 0]),
            np.float64(quats[i, 1]),
            np.float64(quats[i, 2]),
            np.float64(quats[i, 3]),
        )
        qn = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        qw, qx, qy, qz = qw / qn, qx / qn, qy / qn, qz / qn
        r00 = 1.0 - 2.0 * (qy * qy + qz * qz)
        r01 = 2.0 * (qx * qy - qw * qz)
        r02 = 2.0 * (qx * qz + qw * qy)
        r10 = 2.0 * (qx * qy + qw * qz)
        r11 = 1.0 - 2.0 * (qx * qx + qz * qz)
        r12 = 2.0 * (qy * qz - qw * qx)
        r20 = 2.0 * (qx * qz - qw * qy)
        r21 = 2.0 * (qy * qz + qw * qx)
        r22 = 1.0 - 2.0 * (qx * qx + qy * qy)
        s0, s1, s2 = np.float64(scales[i, 0]), np.float64(scales[i, 1]), np.float64(scales[i, 2])
        # A = V_R @ R_q @ diag(s): the Gaussian's axes in camera space; covariance = A A^T.
        m00, m01, m02 = r00 * s0, r01 * s1, r02 * s2
        m10, m11, m12 = r10 * s0, r11 * s1, r12 * s2
        m20, m21, m22 = r20 * s0, r21 * s1, r22 * s2
        a00 = v[0, 0] * m00 + v[0, 1] * m10 + v[0, 2] * m20
        a01 = v[0, 0] * m01 + v[0, 1] * m11 + v[0, 2] * m21
        a02 = v[0, 0] * m02 + v[0, 1] * m12 + v[0, 2] * m22
        a10 = v[1, 0] * m00 + v[1, 1] * m10 + v[1, 2] * m20
        a11 = v[1, 0] * m01 + v[1, 1] * m11 + v[1, 2] * m21
        a12 = v[1, 0] * m02 + v[1, 1] * m12 + v[1, 2] * m22
        a20 = v[2, 0] * m00 + v[2, 1] * m10 + v[2, 2] * m20
        a21 = v[2, 0] * m01 + v[2, 1] * m11 + v[2, 2] * m21
        a22 = v[2, 0] * m02 + v[2, 1] * m12 + v[2, 2] * m22
        # EWA: the Jacobian of the perspective projection, evaluated at a centre clamped to 1.3x the
        # field of view like gsplat, so Gaussians far off-screen do not blow up.
        rz = 1.0 / z
        tx = z * min(lim_x_pos, max(-lim_x_neg, x * rz))
        ty = z * min(lim_y_pos, max(-lim_y_neg, y * rz))
        j00 = fx * rz
        j02 = -fx * tx * rz * rz
        j11 = fy * rz
        j12 = -fy * ty * rz * rz
        # B = J A (2x3); the 2D covariance is B B^T.
        b00 = j00 * a00 + j02 * a20
        b01 = j00 * a01 + j02 * a21
        b02 = j00 * a02 + j02 * a22
        b10 = j11 * a10 + j12 * a20
        b11 = j11 * a11 + j12 * a21
        b12 = j11 * a12 + j12 * a22
        c00 = b00 * b00 + b01 * b01 + b02 * b02 + eps2d
        c01 = b00 * b10 + b01 * b11 + b02 * b12
        c11 = b10 * b10 + b11 * b11 + b12 * b12 + eps2d
        det = c00 * c11 - c01 * c01
        if not det > 0.0:
            continue
        # Opacity-aware extent (gsplat >= 1.4): beyond sqrt(2 ln(255 o)) standard deviations alpha < 1/255.
        extend = min(EXTEND_MAX, math.sqrt(2.0 * math.log(op / alpha_min)))
        rx = math.ceil(extend * math.sqrt(c00))
        ry = math.ceil(extend * math.sqrt(c11))
        if rx <= 0.0 and ry <= 0.0:
            continue
        mx = np.float32(fx * x * rz + cx)
        my = np.float32(fy * y * rz + cy)
        mx64, my64 = np.float64(mx), np.float64(my)
        if not (mx64 + rx > 0.0 and mx64 - rx < width and my64 + ry > 0.0 and my64 - ry < height):
            continue
        # The pixels to visit: centres (j + 0.5) inside the box of the ellipse sigma <= smax, clamped to
        # the image. That ellipse holds every pixel with alpha >= 1/255 (gsplat's ceil-ed box is up to a
        # pixel wider on each side, which only adds pixels it then skips), so the image is the same.
        smax = math.log(op / alpha_min) + SKIP_MARGIN
        hx = math.sqrt(2.0 * smax * c00)
        hy = math.sqrt(2.0 * smax * c11)
        px0 = max(0.0, math.ceil(mx64 - hx - 0.5))
        px1 = min(width - 1.0, math.floor(mx64 + hx - 0.5))
        py0 = max(0.0, math.ceil(my64 - hy - 0.5))
        py1 = min(height - 1.0, math.floor(my64 + hy - 0.5))
        if px0 > px1 or py0 > py1:
            continue
        params[i, P_MX] = mx
        params[i, P_MY] = my
        params[i, P_CA] = c11 / det
        params[i, P_CB] = -c01 / det
        params[i, P_CC] = c00 / det
        params[i, P_OP] = opacities[i]
        params[i, P_Z] = z
        if is_sh:
            dx, dy, dz = wx - campos[0], wy - campos[1], wz - campos[2]
            norm = math.sqrt(dx * dx + dy * dy + dz * dz)
            if norm > 0.0:
                dx, dy, dz = dx / norm, dy / norm, dz / norm
            for c in range(3):
                params[i, P_R + c] = _sh_colour(coeffs, i, k, c, dx, dy, dz)
        else:
            for c in range(3):
                params[i, P_R + c] = coeffs[i, 0, c]
        rects[i, 0] = np.int32(px0)
        rects[i, 1] = np.int32(px1)
        rects[i, 2] = np.int32(py0)
        rects[i, 3] = np.int32(py1)


@njit(cache=True)
def _depth_order(depth_bits, rects):  # pragma: no cover - compiled
    """Visible Gaussian ids sorted by depth, ties by id (stable LSD radix sort on float32 bits)."""
    n = rects.shape[0]
    count = 0
    for i in range(n):
        if rects[i, 0] <= rects[i, 1]:
            count += 1
    ids = np.empty(count, np.int32)
    keys = np.empty(count, np.uint32)
    j = 0
    for i in range(n):
        if rects[i, 0] <= rects[i, 1]:
            ids[j] = i
            keys[j] = depth_bits[i]  # depths are > 0, so their IEEE bits sort like the numbers
            j += 1
    ids2 = np.empty(count, np.int32)
    keys2 = np.empty(count, np.uint32)
    hist = np.empty(2048, np.int64)
    for shift in (0, 11, 22):
        hist[:] = 0
        for j in range(count):
            hist[(keys[j] >> shift) & 2047] += 1
        total = 0
        for b in range(2048):
            h = hist[b]
            hist[b] = total
            total += h
        for j in range(count):
            b = (keys[j] >> shift) & 2047
            dst = hist[b]
            hist[b] = dst + 1
            ids2[dst] = ids[j]
            keys2[dst] = keys[j]
        ids, ids2 = ids2, ids
        keys, keys2 = keys2, keys
    return ids


@njit(parallel=True, cache=True)
def _bin(order, rects, tiles_x, n_tiles, n_chunks):  # pragma: no cover - compiled
    """Per-tile lists of Gaussian ids, each in depth order: a stable, parallel counting sort by tile.

    The depth-sorted ids are cut into n_chunks runs; each run counts and then scatters its own
    intersections, and a tile's slots are laid out run by run, so every list stays in depth order.
    Each Gaussian's tile range is gathered once, in depth order, so both passes read it sequentially.
    """
    m = order.shape[0]
    spans = np.empty((m, 4), np.int32)  # first/last tile column, first/last tile row
    for k in prange(m):
        g = order[k]
        for j in range(4):
            spans[k, j] = rects[g, j] // TILE  # rects are >= 0 here: // is a plain shift
    counts = np.zeros((n_chunks, n_tiles), np.int64)
    for c in prange(n_chunks):
        for k in range(c * m // n_chunks, (c + 1) * m // n_chunks):
            for ty in range(spans[k, 2], spans[k, 3] + 1):
                for tx in range(spans[k, 0], spans[k, 1] + 1):
                    counts[c, ty * tiles_x + tx] += 1
    offsets = np.empty(n_tiles + 1, np.int64)
    total = 0
    for t in range(n_tiles):
        offsets[t] = total
        for c in range(n_chunks):
            h = counts[c, t]
            counts[c, t] = total  # now the next free slot of run c in tile t
            total += h
    offsets[n_tiles] = total
    lists = np.empty(total, np.int32)
    for c in prange(n_chunks):
        for k in range(c * m // n_chunks, (c + 1) * m // n_chunks):
            g = order[k]
            for ty in range(spans[k, 2], spans[k, 3] + 1):
                for tx in range(spans[k, 0], spans[k, 1] + 1):
                    t = ty * tiles_x + tx
                    lists[counts[c, t]] = g
                    counts[c, t] += 1
    return offsets, lists


#: Gaussians composited between two looks at which pixels still take Gaussians (rows to skip, tile done).
LIVE_CHECK = 16


@njit(cache=True)
def _composite_tile(
    t, params, rects, offsets, lists, tiles_x, width, height, background, rgb, alpha, depth, t_stop
):  # pragma: no cover - compiled
    """Front-to-back compositing of one 16x16 tile with gsplat's per-pixel arithmetic, shaped for SIMD.

    A tile row of 16 pixels is the vector: for each Gaussian and each tile row its box touches, the
    innermost loop runs over all 16 pixels of the row with no branch, float32 throughout, every decision
    (outside the ellipse, alpha < 1/255, pixel finished, transmittance at its floor) a select, the
    pixel state in structure-of-arrays rows. LLVM turns it into packed instructions (one zmm register a
    row with AVX-512, two ymm with AVX2; benchmarks/render.py counts them). Whole rows with no pixel left, and whole tiles, are skipped: which
    pixels still take Gaussians is looked at every LIVE_CHECK Gaussians, not per pixel.
    """
    half = np.float32(0.5)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    s_cap = EXP_S_MAX
    x0 = (t % tiles_x) * TILE
    y0 = (t // tiles_x) * TILE
    x1 = min(x0 + TILE, width)
    y1 = min(y0 + TILE, height)
    trans = np.ones((TILE, TILE), np.float32)
    acc_r = np.zeros((TILE, TILE), np.float32)
    acc_g = np.zeros((TILE, TILE), np.float32)
    acc_b = np.zeros((TILE, TILE), np.float32)
    acc_z = np.zeros((TILE, TILE), np.float32)
    live = np.zeros((TILE, TILE), np.int32)  # 1 while the pixel takes Gaussians; 0 outside the image
    live[: y1 - y0, : x1 - x0] = 1
    lo = np.full(TILE, TILE, np.int32)  # first and last lane of each row that still takes Gaussians
    hi = np.full(TILE, -1, np.int32)
    lo[: y1 - y0] = 0
    hi[: y1 - y0] = x1 - x0 - 1
    xs = np.empty(TILE, np.float32)
    for lane in range(TILE):
        xs[lane] = np.float32(x0 + lane) + half
    first, end = offsets[t], offsets[t + 1]
    for e in range(first, end):
        g = lists[e]
        mx = params[g, P_MX]
        my = params[g, P_MY]
        ca = params[g, P_CA]
        cb = params[g, P_CB]
        cc = params[g, P_CC]
        op = params[g, P_OP]
        cr = params[g, P_R]
        cg = params[g, P_G]
        cbl = params[g, P_B]
        cz = params[g, P_Z]
        gx0 = rects[g, 0] - x0
        gx1 = rects[g, 1] - x0
        for yy in range(max(rects[g, 2], y0), min(rects[g, 3], y1 - 1) + 1):
            r = yy - y0
            if gx1 < lo[r] or gx0 > hi[r]:  # no pixel of this row under the Gaussian takes it
                continue
            dy = my - (np.float32(yy) + half)
            cdy = cc * dy * dy
            tr, lv = trans[r], live[r]
            ar, ag, ab, az = acc_r[r], acc_g[r], acc_b[r], acc_z[r]
            for lane in range(TILE):
                dx = mx - xs[lane]
                sigma = half * (ca * dx * dx + cdy) + cb * dx * dy
                a = min(op * exp_neg(min(max(sigma, zero), s_cap)), ALPHA_MAX)
                tp = tr[lane]
                next_t = tp * (one - a)
                use = (sigma >= zero) & (a >= ALPHA_MIN) & (lv[lane] != 0)
                take = use & (next_t > T_MIN)  # gsplat stops before the Gaussian that would reach T_MIN
                w = a * tp if take else zero
                ar[lane] += cr * w
                ag[lane] += cg * w
                ab[lane] += cbl * w
                az[lane] += cz * w
                tr[lane] = next_t if take else tp
                lv[lane] = 0 if use & (next_t <= t_stop) else lv[lane]  # t_stop >= T_MIN
        if (e - first) % LIVE_CHECK == LIVE_CHECK - 1:
            alive = 0  # > 0 while some pixel of the tile takes Gaussians
            for r in range(TILE):  # integer min/max reductions: they vectorise
                first_live = TILE
                last_live = -1
                for lane in range(TILE):
                    on = live[r, lane] != 0
                    first_live = min(first_live, lane if on else TILE)
                    last_live = max(last_live, lane if on else -1)
                lo[r] = first_live
                hi[r] = last_live
                alive += last_live + 1
            if alive == 0:
                break
    for yy in range(y0, y1):
        r = yy - y0
        for xx in range(x0, x1):
            lane = xx - x0
            tp = trans[r, lane]
            a_out = one - tp
            alpha[yy, xx] = a_out
            rgb[yy, xx, 0] = acc_r[r, lane] + tp * background[0]
            rgb[yy, xx, 1] = acc_g[r, lane] + tp * background[1]
            rgb[yy, xx, 2] = acc_b[r, lane] + tp * background[2]
            depth[yy, xx] = acc_z[r, lane] / max(a_out, np.float32(1e-10))


@njit(parallel=True, cache=True)
def _composite(
    params, rects, offsets, lists, tile_order, tiles_x, width, height, background, rgb, alpha, depth, t_stop
):  # pragma: no cover - compiled
    """All tiles, in parallel (each tile writes only its own pixels)."""
    for k in prange(tile_order.shape[0]):
        _composite_tile(
            tile_order[k], params, rects, offsets, lists, tiles_x, width, height,
            background, rgb, alpha, depth, t_stop,
        )  # fmt: skip


def _tile_order(n_tiles: int) -> np.ndarray:
    # A fixed shuffle of the tiles, so that the threads' equal shares of prange get a similar mix of busy
    # (face) and empty (background) tiles.
    order = _TILE_ORDERS.get(n_tiles)
    if order is None:
        order = np.random.default_rng(0).permutation(n_tiles).astype(np.int32)
        _TILE_ORDERS[n_tiles] = order
    return order


def render(
    means: np.ndarray,  # [N, 3] f32
    quats: np.ndarray,  # [N, 4] f32 unit
    scales: np.ndarray,  # [N, 3] f32
    opacities: np.ndarray,  # [N] f32
    coeffs: np.ndarray,  # [N, K, 3] f32
    is_sh: bool,
    world_to_camera: np.ndarray,  # [4, 4] f64
    camera_position: np.ndarray,  # [3] f64
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    near: float,
    far: float,
    background: np.ndarray,  # [3] f32
    stage_seconds: dict[str, float] | None = None,
    eps2d: float = EPS2D,
    t_stop: float = float(T_MIN),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # [H, W, 3], [H, W], [H, W] f32
    """One view: RGB (background composited), alpha and expected depth, as new float32 arrays.

    `t_stop` (see `renderers.rasterize`): a pixel whose transmittance has fallen to it takes no more
    Gaussians.

    `stage_seconds`, when given, receives the wall time of each stage (for benchmarks/render.py).
    """
    n = means.shape[0]
    params = np.empty((n, N_PARAMS), np.float32)
    rects = np.empty((n, 4), np.int32)
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    rgb = np.empty((height, width, 3), np.float32)
    alpha = np.empty((height, width), np.float32)
    depth = np.empty((height, width), np.float32)
    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        if stage_seconds is not None:
            clock.append(time.perf_counter())
            stage_seconds[stage] = clock[-1] - clock[-2]

    with PARALLEL_LOCK:
        _project(
            means, quats, scales, opacities, coeffs, is_sh, world_to_camera, camera_position,
            fx, fy, cx, cy, width, height, near, far, float(eps2d), params, rects,
        )  # fmt: skip
        lap("project")
        depth_bits = np.ascontiguousarray(params[:, P_Z]).view(np.uint32)
        order = _depth_order(depth_bits, rects)
        lap("sort")
        offsets, lists = _bin(order, rects, tiles_x, tiles_x * tiles_y, numba.get_num_threads())
        lap("bin")
        _composite(
            params, rects, offsets, lists, _tile_order(tiles_x * tiles_y), tiles_x, width, height,
            background, rgb, alpha, depth, np.float32(t_stop),
        )  # fmt: skip
        lap("composite")
    if stage_seconds is not None:
        stage_seconds["intersections"] = float(len(lists))
    return rgb, alpha, depth

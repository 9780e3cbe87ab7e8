"""The numba kernel behind `compositing.FramePaster`, loaded on its first frame (not by `import renderers`).

Its plain twin is `paste_back(clip(composite_over(rgb, alpha, background)) * 255, ...)`, which the tests
compare it with.
"""

from __future__ import annotations

import numpy as np

from .parallel import load_numba

numba = load_numba()


@numba.njit(cache=True, inline="always")
def _crop_value(rgb, alpha, bg, y, x, c):  # pragma: no cover - compiled
    """Crop pixel (y, x) channel c composited over its background, clipped, in grey levels."""
    v = rgb[y, x, c] + (np.float32(1.0) - alpha[y, x]) * bg[y, x, c]
    return min(max(v, np.float32(0.0)), np.float32(1.0)) * np.float32(255.0)


@numba.njit(parallel=True, cache=True)
def paste_kernel(rgb, alpha, bg, photo, weight, inv, y0, y1, x0, x1, out):  # pragma: no cover - compiled
    """Frame rows y0:y1, columns x0:x1 of `out`: the photo blended through `weight` with the composited
    crop, sampled bilinearly at `inv` (frame pixel -> crop pixel affine)."""
    h, w = alpha.shape
    one = np.float32(1.0)
    for y in numba.prange(y0, y1):
        for x in range(x0, x1):
            wt = weight[y, x]
            if wt <= 0.0:
                continue
            u = inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]
            v = inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]
            u0 = int(np.floor(u))
            v0 = int(np.floor(v))
            fu = np.float32(u - u0)
            fv = np.float32(v - v0)
            ua, ub = min(max(u0, 0), w - 1), min(max(u0 + 1, 0), w - 1)
            va, vb = min(max(v0, 0), h - 1), min(max(v0 + 1, 0), h - 1)
            for c in range(3):
                top = (
                    _crop_value(rgb, alpha, bg, va, ua, c) * (one - fu)
                    + _crop_value(rgb, alpha, bg, va, ub, c) * fu
                )
                bot = (
                    _crop_value(rgb, alpha, bg, vb, ua, c) * (one - fu)
                    + _crop_value(rgb, alpha, bg, vb, ub, c) * fu
                )
                val = top * (one - fv) + bot * fv
                blended = np.float32(photo[y, x, c]) * (one - wt) + val * wt
                out[y, x, c] = np.uint8(min(max(np.floor(blended + np.float32(0.5)), 0.0), 255.0))

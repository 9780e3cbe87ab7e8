"""The numbers every rasterize backend shares: gsplat 1.5.3's thresholds and a float32 exp(-s) table.

Kept apart from the numba kernels (renderers._cpu) so that the torch reference and gsplat's wrapper in
rasterize.py read them without loading numba.
"""

from __future__ import annotations

import math

import numpy as np

TILE = 16
ALPHA_MIN = np.float32(1.0 / 255.0)  # gsplat's ALPHA_THRESHOLD: weaker contributions are skipped
ALPHA_MAX = np.float32(0.999)  # gsplat clamps alpha here (the 3DGS paper uses 0.99)
T_MIN = np.float32(1e-4)  # a pixel stops once its transmittance would fall to this (exclusive)
EPS2D = 0.3  # screen-space low-pass added to the 2D covariance diagonal, pixels^2
EXTEND_MAX = 3.33  # gsplat's cap on the opacity-aware extent, in standard deviations
# A Gaussian is skipped at a pixel once sigma exceeds log(255 * opacity) + this margin: there alpha is
# below 1/255 by a factor exp(-1e-3), far beyond float32 rounding, so the skip never changes a decision.
SKIP_MARGIN = 1e-3

# exp(-s) for 0 <= s <= EXP_S_MAX in float32, written out so that the CPU backend (_cpu.exp_neg) and the
# torch reference (rasterize._exp_neg_torch, the same operations in the same order) get bit-identical
# alphas, and every alpha/transmittance threshold decides the same way in both, whatever libm or SLEEF
# do. A table of exp(-i / 1024) and its forward differences, interpolated linearly: u = 1024 s is exact
# (a power of two), so is its split into i + f, and the chord's error is below h^2 / 8 = 1.2e-7 of exp;
# with the rounding of one multiply-add, within 3e-7 of exp (tested). It is a third cheaper than a
# polynomial after range reduction, and the compositing loop spends much of its time here.
EXP_S_MAX = np.float32(5.6)  # > log(255) + SKIP_MARGIN, the largest sigma ever exponentiated
EXP_STEPS = np.float32(1024.0)  # table entries per unit of s (a power of two)
_EXP_ROWS = int(math.ceil(float(EXP_S_MAX) * 1024)) + 1


def _exp_table() -> np.ndarray:
    values = np.exp(-np.arange(_EXP_ROWS + 1, dtype=np.float64) / 1024.0).astype(np.float32)
    table = np.empty((_EXP_ROWS, 2), np.float32)
    table[:, 0] = values[:-1]
    table[:, 1] = values[1:] - values[:-1]  # exact: neighbours differ by far less than a factor 2
    return table


EXP_TABLE = _exp_table()  # [rows, 2]: exp(-i / 1024) and the step to the next entry

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
# do. exp(-s) = exp(-s / 16) ** 16: q = s / 16 <= 0.35 is exact (a power of two), exp(-q) is its Taylor
# polynomial of degree 7 (truncation below 6e-9) in Estrin's form, (c0 - c1 q + q^2 (c2 - c3 q)) +
# q^4 (c4 - c5 q + q^2 (c6 - c7 q)) with c_k = 1/k!, whose chain of dependent operations is half as long
# as Horner's, then four squarings. Within 3e-6 of exp, relative (tested), which moves a pixel by less
# than 1e-5. Only multiplies and adds: no table lookup, so the compositing kernel's lanes need no gather
# and vectorise (a table of exp(-i/1024) cost two gathers per 8 pixels and was slower).
EXP_S_MAX = np.float32(5.6)  # > log(255) + SKIP_MARGIN, the largest sigma ever exponentiated
EXP_SQUARINGS = 4
EXP_SCALE = np.float32(1.0 / 2**EXP_SQUARINGS)
#: c_k = 1/k! for k = 0..7: exp(-q) = sum of c_k (-q)^k.
EXP_COEFFS = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))

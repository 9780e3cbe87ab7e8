"""rasterize(): draw Gaussians with gsplat (CUDA), the numba CPU backend, or the dense torch reference.

All three backends follow gsplat 1.5.3's conventions (read from its source):

- EWA splatting: camera-space covariance R Σ R^T, projected with the Jacobian of the pinhole projection
  (evaluated at the centre clamped to 1.3x the field of view), plus a 0.3 px^2 low-pass on the 2D
  covariance diagonal (``eps2d``; no opacity compensation, gsplat's "classic" mode).
- A Gaussian is dropped when its centre depth is outside [near, far], its opacity is below 1/255, or its
  screen-space box misses the image. Its box half-width is ceil(e * sqrt(Σ2d_xx)) with gsplat's
  opacity-aware extent e = min(3.33, sqrt(2 ln(255 o))) standard deviations.
- Pixel (j, i) is sampled at (j + 0.5, i + 0.5); alpha = min(0.999, o * exp(-0.5 d^T Σ2d^-1 d)) and
  contributions with alpha < 1/255 are skipped; compositing is front to back in increasing centre depth
  (ties: lower index first) and a pixel stops before the Gaussian that would bring its transmittance to
  1e-4 or below.

The CPU backend and the reference compute each 2D Gaussian in float64 and round it to float32, then
evaluate pixels with the same float32 operations in the same order, including a shared float32
exp(-s) (``_cpu.exp_neg``, a polynomial within 3e-6 of exp); so every 1/255 and 1e-4 decision
agrees and their images match to float32 rounding. gsplat (float32 projection, CUDA's fast exp) may flip a decision on
a rare pixel.

Why a dense reference equals the tiled backends exactly (not just within tolerance): outside the ellipse
d^T Σ2d^-1 d = e^2 with e = sqrt(2 ln(255 o)), alpha = o exp(-e^2/2) < 1/255, so every pixel a tile
renderer never visits would be skipped by the dense renderer anyway. The 3.33 cap never binds, because
sqrt(2 ln 255) = 3.329 < 3.33 for o <= 1 (a plain 3-sigma box would miss alphas up to 0.011).

Outputs: ``rgb`` is the composited colour (with the background, black by default, behind);
``alpha`` = 1 - final transmittance; ``depth`` is the expected depth sum(w_i z_i) / sum(w_i) of the
camera-space centre depths z_i (cm) with compositing weights w_i, and 0 where alpha is 0 (gsplat's
"ED" mode).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._conventions import (
    ALPHA_MAX,
    ALPHA_MIN,
    EPS2D,
    EXP_COEFFS,
    EXP_S_MAX,
    EXP_SCALE,
    EXP_SQUARINGS,
    EXTEND_MAX,
    T_MIN,
    TILE,
)
from .camera import Camera
from .gaussians import Gaussians, quat_to_rotmat, sh_to_rgb

BACKENDS = ("auto", "gsplat", "cpu", "reference")


class RenderOutput(NamedTuple):
    """Rendered images: [H, W, ...] for one camera, [C, H, W, ...] for a list of C cameras."""

    rgb: Tensor  # [(C,) H, W, 3]
    alpha: Tensor  # [(C,) H, W]
    depth: Tensor  # [(C,) H, W] expected depth, cm; 0 where alpha == 0


def rasterize(
    gaussians: Gaussians,
    cameras: Camera | Sequence[Camera],
    width: int | None = None,
    height: int | None = None,
    background: Tensor | Sequence[float] | None = None,  # [3] RGB
    backend: str = "auto",
    eps2d: float = EPS2D,
    t_stop: float | None = None,
) -> RenderOutput:
    """Render Gaussians from one camera ([H, W, ...] outputs) or a list of cameras ([C, H, W, ...]).

    `width`/`height` default to the cameras' size; when given, the cameras are rescaled to it
    (`Camera.resized`). `background` is an RGB colour (default black). Backends: "gsplat" (CUDA tensors,
    needs the optional gsplat package; differentiable), "cpu" (numba, tile based), "reference" (dense
    torch, slow, the test oracle), "auto" (gsplat when the Gaussians are on CUDA and gsplat imports,
    else cpu; CUDA Gaussians that fall back warn once, naming gsplat's import error). `eps2d` is the screen-space low-pass (pixels², added to each projected covariance's
    diagonal; gsplat's default 0.3, which every backend takes the same way). Outputs are float32 on the
    Gaussians' device. `t_stop` (cpu and reference backends; None: gsplat's 1e-4, and gsplat always uses
    that): once a pixel's transmittance has fallen to `t_stop`, it takes no more Gaussians: a caller that
    treats 99% coverage as opaque (the portrait avatar) skips what lies behind it.
    """
    if not isinstance(gaussians, Gaussians):
        raise ValueError(f"rasterize needs a Gaussians, got {type(gaussians).__name__}")
    single = isinstance(cameras, Camera)
    cams = [cameras] if single else list(cameras)
    if not cams or not all(isinstance(c, Camera) for c in cams):
        raise ValueError("rasterize needs a Camera or a non-empty list of Cameras")
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    if width is not None:
        if int(width) < 1 or int(height) < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        cams = [c.resized(int(width), int(height)) for c in cams]
    if len({(c.width, c.height) for c in cams}) > 1:
        raise ValueError("all cameras in one rasterize call must have the same image size")
    bg = torch.zeros(3) if background is None else torch.as_tensor(background, dtype=torch.float32).cpu()
    if bg.shape != (3,) or not torch.isfinite(bg).all():
        raise ValueError(f"background must be 3 finite RGB values, got {tuple(bg.shape)}")
    if not (0.0 <= float(eps2d) < 100.0):
        raise ValueError(f"eps2d must be in [0, 100) pixels², got {eps2d}")
    if t_stop is not None and not (float(T_MIN) <= float(t_stop) < 1.0):
        raise ValueError(f"t_stop must be in [{float(T_MIN):g}, 1), got {t_stop}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = _auto_backend(gaussians.device)

    if backend == "gsplat":
        out = _render_gsplat(gaussians, cams, bg, eps2d)
    else:
        render_one = _render_cpu if backend == "cpu" else _render_reference
        stop = float(T_MIN) if t_stop is None else float(t_stop)
        views = [render_one(gaussians, cam, bg, eps2d=eps2d, t_stop=stop) for cam in cams]
        if single:
            return RenderOutput(*(t.to(gaussians.device) for t in views[0]))
        out = RenderOutput(*(torch.stack([v[i] for v in views]).to(gaussians.device) for i in range(3)))
    return RenderOutput(*(t[0] for t in out)) if single else out


def _auto_backend(device: torch.device) -> str:
    """What backend="auto" means for Gaussians on `device`: gsplat for CUDA when gsplat imports, else the
    CPU backend, with one warning per process when CUDA Gaussians fall back because gsplat cannot run."""
    if device.type != "cuda":
        return "cpu"
    error = _gsplat_import_error()
    if error is None:
        return "gsplat"
    _warn_cpu_fallback(_gsplat_problem(error))
    return "cpu"


@functools.cache
def _gsplat_import_error() -> BaseException | None:
    """What importing gsplat raised (None when it imports); tried once per process."""
    try:
        import gsplat  # noqa: F401
    except Exception as err:  # a broken install raises anything from its own imports (OSError, RuntimeError)
        return err
    return None


def _gsplat_problem(error: BaseException) -> str:
    """One line saying why gsplat cannot be used, from what importing it raised."""
    if isinstance(error, ModuleNotFoundError) and error.name == "gsplat":
        return "gsplat is not installed (pip install 'headsplat[cuda]')"
    detail = " ".join(f"{type(error).__name__}: {error}".split())
    return f"gsplat is installed but fails to import ({detail})"


@functools.cache
def _warn_cpu_fallback(problem: str) -> None:
    warnings.warn(
        f"rasterize: {problem}; rendering CUDA Gaussians on the CPU instead", RuntimeWarning, stacklevel=4
    )


# ----------------------------------------------------------------------------------------------- cpu


def _render_cpu(
    g: Gaussians,
    cam: Camera,
    bg: Tensor,
    stage_seconds: dict[str, float] | None = None,
    eps2d: float = EPS2D,
    t_stop: float = float(T_MIN),
) -> tuple[Tensor, Tensor, Tensor]:
    from . import _cpu  # numba loads here, on the first CPU render

    def host(t: Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).contiguous().numpy()

    coeffs = g.colors if g.colors.ndim == 3 else g.colors[:, None, :]
    m = cam.world_to_camera.double().numpy()
    rgb, alpha, depth = _cpu.render(
        host(g.means), host(g.quats), host(g.scales), host(g.opacities), host(coeffs), g.colors.ndim == 3,
        m, cam.position.double().numpy(), cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height,
        cam.near, cam.far, bg.numpy(), stage_seconds, eps2d, t_stop,
    )  # fmt: skip
    return torch.from_numpy(rgb), torch.from_numpy(alpha), torch.from_numpy(depth)


# ----------------------------------------------------------------------------------------- reference


class _Projected(NamedTuple):
    means2d: Tensor  # [N, 2] f32 pixels
    conics: Tensor  # [N, 3] f32 inverse 2D covariance (xx, xy, yy)
    depths: Tensor  # [N] f32 camera-space z, cm
    visible: Tensor  # [N] bool


def _project_reference(g: Gaussians, cam: Camera, eps2d: float = EPS2D) -> _Projected:
    """gsplat's EWA projection in float64 torch, rounded to float32 like the CPU backend."""
    view = cam.world_to_camera.to(g.device, torch.float64)
    rot_v, t_v = view[:3, :3], view[:3, 3]
    means_c = g.means.double() @ rot_v.T + t_v
    axes = (
        quat_to_rotmat(torch.nn.functional.normalize(g.quats.double(), dim=-1))
        * g.scales.double()[:, None, :]
    )  # R_q diag(s)
    axes_c = rot_v @ axes
    cov_c = axes_c @ axes_c.transpose(1, 2)
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= cam.near) & (z <= cam.far)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keep culled rows finite
    w, h, fx, fy, cx, cy = cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy
    lim_x = (-(cx / fx + 0.3 * (0.5 * w / fx)), (w - cx) / fx + 0.3 * (0.5 * w / fx))
    lim_y = (-(cy / fy + 0.3 * (0.5 * h / fy)), (h - cy) / fy + 0.3 * (0.5 * h / fy))
    tx = z * torch.clamp(x / z, *lim_x)
    ty = z * torch.clamp(y / z, *lim_y)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], -1).reshape(-1, 2, 3)
    cov2d = jac @ cov_c @ jac.transpose(1, 2) + float(eps2d) * torch.eye(
        2, dtype=torch.float64, device=g.device
    )
    a, b, d = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * d - b * b
    conics = torch.stack([d / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * x * (1.0 / z) + cx, fy * y * (1.0 / z) + cy], -1).float()
    op = g.opacities.double()
    alpha_min = float(ALPHA_MIN)
    extend = torch.sqrt(2.0 * torch.log(torch.clamp_min(op, alpha_min) / alpha_min)).clamp_max(EXTEND_MAX)
    rx = torch.ceil(extend * a.sqrt())
    ry = torch.ceil(extend * d.sqrt())
    m2 = means2d.double()
    on_image = (m2[:, 0] + rx > 0) & (m2[:, 0] - rx < w) & (m2[:, 1] + ry > 0) & (m2[:, 1] - ry < h)
    visible = in_depth & (det > 0) & (op >= alpha_min) & ((rx > 0) | (ry > 0)) & on_image
    return _Projected(means2d, conics.float(), means_c[:, 2].float(), visible)


def _exp_neg_torch(s: Tensor) -> Tensor:
    """exp(-s) for float32 s in [0, 5.6]: _cpu.exp_neg's operations in the same order (bit-identical)."""
    c = [float(v) for v in EXP_COEFFS]
    q = s * float(EXP_SCALE)
    q2 = q * q
    q4 = q2 * q2
    p = (c[0] - q * c[1] + q2 * (c[2] - q * c[3])) + q4 * (c[4] - q * c[5] + q2 * (c[6] - q * c[7]))
    for _ in range(EXP_SQUARINGS):
        p = p * p
    return p


def _render_reference(
    g: Gaussians, cam: Camera, bg: Tensor, eps2d: float = EPS2D, t_stop: float = float(T_MIN)
) -> tuple[Tensor, Tensor, Tensor]:
    """Dense and obviously correct: every visible Gaussian at every pixel, front to back by depth."""
    proj = _project_reference(g, cam, eps2d)
    if g.colors.ndim == 3:
        colors = sh_to_rgb(g.colors, g.means - cam.position.to(g.device))
    else:
        colors = g.colors
    ids = proj.visible.nonzero()[:, 0]
    ids = ids[torch.sort(proj.depths[ids], stable=True).indices]
    h, w = cam.height, cam.width
    f32 = dict(dtype=torch.float32, device=g.device)
    py, px = torch.meshgrid(torch.arange(h, **f32) + 0.5, torch.arange(w, **f32) + 0.5, indexing="ij")
    trans = torch.ones(h, w, **f32)
    color_acc = torch.zeros(h, w, 3, **f32)
    depth_acc = torch.zeros(h, w, **f32)
    done = torch.zeros(h, w, dtype=torch.bool, device=g.device)
    alpha_min, alpha_max, t_min = (torch.tensor(v, **f32) for v in (ALPHA_MIN, ALPHA_MAX, T_MIN))
    for i in ids.tolist():
        a, b, c = proj.conics[i]
        dx = proj.means2d[i, 0] - px
        dy = proj.means2d[i, 1] - py
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        # Beyond sigma = 5.6 alpha < exp(-5.6) < 1/255 for any opacity, so clamping there skips the same.
        alpha = torch.minimum(g.opacities[i] * _exp_neg_torch(sigma.clamp(0.0, EXP_S_MAX)), alpha_max)
        use = (sigma >= 0) & (alpha >= alpha_min) & ~done
        next_trans = trans * (1.0 - alpha)
        stop = use & (next_trans <= t_min)
        done |= stop
        use &= ~stop
        weight = torch.where(use, alpha * trans, 0.0)
        color_acc += colors[i] * weight[..., None]
        depth_acc += proj.depths[i] * weight
        trans = torch.where(use, next_trans, trans)
        done |= use & (next_trans <= t_stop)
    alpha_out = 1.0 - trans
    rgb = color_acc + trans[..., None] * bg.to(g.device)
    depth = depth_acc / torch.clamp_min(alpha_out, 1e-10)
    return rgb, alpha_out, depth


# -------------------------------------------------------------------------------------------- gsplat


def _render_gsplat(g: Gaussians, cams: list[Camera], bg: Tensor, eps2d: float = EPS2D) -> RenderOutput:
    error = _gsplat_import_error()
    if error is not None:
        raise ValueError(
            f"backend='gsplat' cannot run: {_gsplat_problem(error)}; use backend='cpu'"
        ) from error
    from gsplat import rasterization

    if g.device.type != "cuda":
        raise ValueError("backend='gsplat' needs the Gaussians on CUDA: call gaussians.to('cuda') first")
    near, far = {c.near for c in cams}, {c.far for c in cams}
    if len(near) > 1 or len(far) > 1:
        raise ValueError("backend='gsplat' needs one near/far pair for all cameras in a call")
    dev = g.device
    if len(g) == 0:  # gsplat needs at least one Gaussian; an empty scene is just the background
        h, w = cams[0].height, cams[0].width
        zeros = torch.zeros(len(cams), h, w, device=dev)
        return RenderOutput(bg.to(dev).expand(len(cams), h, w, 3).clone(), zeros, zeros.clone())
    viewmats = torch.stack([c.world_to_camera for c in cams]).to(dev)
    ks = torch.stack([c.K for c in cams]).to(dev)
    colors, sh_degree = g.colors, g.sh_degree
    out, alphas, _ = rasterization(
        g.means, g.quats, g.scales, g.opacities, colors, viewmats, ks, cams[0].width, cams[0].height,
        near_plane=near.pop(), far_plane=far.pop(), eps2d=float(eps2d), sh_degree=sh_degree, packed=False,
        tile_size=TILE, backgrounds=bg.to(dev).expand(len(cams), 3), render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # fmt: skip
    return RenderOutput(out[..., :3], alphas[..., 0], out[..., 3])

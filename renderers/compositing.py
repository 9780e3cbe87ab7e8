"""Compositing helpers: a render over a background, and a rendered crop pasted back into a full frame."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .parallel import PARALLEL_LOCK

Image = np.ndarray | Tensor


def composite_over(
    rgb: Image,  # [..., H, W, 3] premultiplied colour (a render with the default black background)
    alpha: Image,  # [..., H, W] coverage in [0, 1]
    background: Image | Sequence[float],  # [3] colour or [..., H, W, 3] image
) -> Image:  # [..., H, W, 3]
    """Porter-Duff "over": rgb + (1 - alpha) * background (rgb is premultiplied by alpha, as rendered)."""
    if rgb.shape[-1] != 3 or tuple(alpha.shape) != tuple(rgb.shape[:-1]):
        raise ValueError(
            f"composite_over needs rgb [..., H, W, 3] and alpha [..., H, W]; got {rgb.shape}, {alpha.shape}"
        )
    if isinstance(rgb, Tensor):
        bg = torch.as_tensor(np.asarray(background) if not isinstance(background, Tensor) else background)
        bg = bg.to(rgb.device, rgb.dtype)
    else:
        bg = np.asarray(background, dtype=rgb.dtype)
    if bg.shape[-1] != 3:
        raise ValueError(f"background must be RGB ([3] or [..., H, W, 3]), got shape {tuple(bg.shape)}")
    return rgb + (1 - alpha[..., None]) * bg


def paste_back(
    crop_rgb: Image,  # [h, w, 3]
    crop_mask: Image,  # [h, w] in [0, 1]: where the crop replaces the frame
    frame: Image,  # [H, W, 3] uint8 or float
    box_or_affine: Sequence[float] | Image,  # (x0, y0, x1, y1) frame pixels, or [2, 3] crop -> frame affine
    feather_px: float = 8.0,
    weight: np.ndarray | None = None,  # [H, W, 1] from paste_weight, to reuse across frames
) -> Image:  # [H, W, 3], same type, dtype and device as frame
    """Paste a crop into a frame through a soft mask whose edges fade over `feather_px` frame pixels.

    The box is in pixel-edge coordinates (the crop's outer edges land on x0, x1); the affine maps crop
    pixel centres to frame pixel centres (OpenCV's warpAffine convention). The mask is warped, eroded by
    feather_px / 2 and blurred (sigma feather_px / 6): the weight rises from ~0 at the mask's edge to ~1
    at feather_px inside it, so no crop pixel from outside the mask shows. Colours blend linearly. A video
    whose mask and box stay put passes `weight=paste_weight(...)` once instead of recomputing it per frame.
    """
    crop = _to_numpy(crop_rgb).astype(np.float32)
    out = _to_numpy(frame)
    if crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"paste_back needs crop_rgb [h, w, 3]; got {crop.shape}")
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"paste_back needs frame [H, W, 3], got {out.shape}")
    big_h, big_w = out.shape[:2]
    if weight is None:
        mask = _to_numpy(crop_mask).astype(np.float32)
        if mask.shape != crop.shape[:2]:
            raise ValueError(
                f"paste_back needs crop_mask [h, w] like the crop; got {mask.shape}, {crop.shape}"
            )
        weight = paste_weight(mask, (big_w, big_h), box_or_affine, feather_px)
    elif weight.shape != (big_h, big_w, 1):
        raise ValueError(f"weight must be [H, W, 1] = {(big_h, big_w, 1)}, got {weight.shape}")
    m = _crop_to_frame(box_or_affine, crop.shape[1], crop.shape[0])
    warped = cv2.warpAffine(crop, m, (big_w, big_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if out.dtype == np.uint8:
        blended = out.astype(np.float32) * (1 - weight) + warped * weight
        result = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    else:
        result = (out * (1 - weight) + warped * weight).astype(out.dtype)
    return torch.from_numpy(result).to(frame.device) if isinstance(frame, Tensor) else result


def paste_weight(
    crop_mask: Image,  # [h, w] in [0, 1]
    frame_size: tuple[int, int],  # (W, H)
    box_or_affine: Sequence[float] | Image,
    feather_px: float = 8.0,
) -> np.ndarray:  # [H, W, 1] float32
    """The feathered blend weight `paste_back` uses, in frame pixels (see paste_back)."""
    mask = _to_numpy(crop_mask).astype(np.float32)
    if mask.ndim != 2:
        raise ValueError(f"crop_mask must be [h, w], got {mask.shape}")
    if feather_px < 0:
        raise ValueError(f"feather_px must be >= 0, got {feather_px}")
    m = _crop_to_frame(box_or_affine, mask.shape[1], mask.shape[0])
    big_w, big_h = frame_size
    weight = cv2.warpAffine(np.clip(mask, 0, 1), m, (big_w, big_h), flags=cv2.INTER_LINEAR, borderValue=0)
    if feather_px > 0:
        radius = int(round(feather_px / 2))
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            weight = cv2.erode(weight, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        weight = cv2.GaussianBlur(weight, (0, 0), sigmaX=feather_px / 6, borderType=cv2.BORDER_CONSTANT)
    return weight[..., None]


def _crop_to_frame(box_or_affine: Sequence[float] | Image, w: int, h: int) -> np.ndarray:
    """The [2, 3] affine from crop pixel centres to frame pixel centres."""
    m = np.asarray(
        _to_numpy(box_or_affine) if isinstance(box_or_affine, Tensor) else box_or_affine, np.float64
    )
    if m.shape == (4,):
        x0, y0, x1, y1 = m
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"paste_back box must have x1 > x0 and y1 > y0, got {tuple(m)}")
        sx, sy = (x1 - x0) / w, (y1 - y0) / h
        m = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
    elif m.shape != (2, 3):
        raise ValueError(f"box_or_affine must be (x0, y0, x1, y1) or a [2, 3] affine, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("box_or_affine has NaN/inf values")
    return m


def _to_numpy(x: Image | Sequence[float]) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


class FramePaster:
    """`paste_back` for a video: one photo, one box and one feathered weight, many rendered crops.

    Each call takes a raw render (premultiplied colour and alpha, as `rasterize` returns them) and the
    crop's background layer, and returns the full uint8 frame: the render composited over its background,
    clipped to [0, 1], resampled bilinearly into the box (edge pixels repeated) and blended into the photo
    through the weight, in one parallel numba pass over the pixels the weight touches. It matches
    `paste_back(clip(composite_over(rgb, alpha, background)) * 255, ...)` to within a grey level (OpenCV
    quantises bilinear weights to 1/32 pixel; this computes them exactly).
    """

    def __init__(
        self,
        photo: np.ndarray,  # [H, W, 3] uint8
        crop_size: tuple[int, int],  # (w, h) of the renders
        box_or_affine: Sequence[float] | Image,
        weight: np.ndarray,  # [H, W, 1] or [H, W] from paste_weight
    ) -> None:
        photo = np.ascontiguousarray(photo)
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise ValueError(f"FramePaster needs a uint8 [H, W, 3] photo; got {photo.dtype} {photo.shape}")
        w2d = np.ascontiguousarray(np.asarray(weight, np.float32).reshape(photo.shape[:2]))
        self.photo, self.weight, self.crop_size = photo, w2d, (int(crop_size[0]), int(crop_size[1]))
        m = _crop_to_frame(box_or_affine, *self.crop_size)
        # Frame pixel centre -> crop pixel coordinates (centres at integers): the inverse affine.
        full = np.vstack([m, [0.0, 0.0, 1.0]])
        self.inverse = np.ascontiguousarray(np.linalg.inv(full)[:2], np.float64)
        ys, xs = np.nonzero(w2d > 0)
        self.region = (
            (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1) if ys.size else (0, 0, 0, 0)
        )

    def __call__(
        self,
        rgb: np.ndarray,  # [h, w, 3] float32 premultiplied
        alpha: np.ndarray,  # [h, w] float32
        background: np.ndarray,  # [h, w, 3] float32 in [0, 1]
    ) -> np.ndarray:  # [H, W, 3] uint8, a new array
        w, h = self.crop_size
        if rgb.shape != (h, w, 3) or alpha.shape != (h, w) or background.shape != (h, w, 3):
            raise ValueError(
                f"FramePaster renders must be [{h}, {w}, 3] / [{h}, {w}]; "
                f"got {rgb.shape}, {alpha.shape}, {background.shape}"
            )
        out = self.photo.copy()
        y0, y1, x0, x1 = self.region
        if y1 > y0:
            from ._paste_kernel import paste_kernel

            with PARALLEL_LOCK:
                paste_kernel(
                    np.ascontiguousarray(rgb, np.float32), np.ascontiguousarray(alpha, np.float32),
                    np.ascontiguousarray(background, np.float32), self.photo, self.weight, self.inverse,
                    y0, y1, x0, x1, out,
                )  # fmt: skip
        return out

"""How the portrait sees the fitted head: its camera, the crop around the head, and projection into it.

Shared by both avatars. The photo's camera sits at the world origin looking along -z (the head model
faces +z), with the principal point at the photo's centre and the fitted focal length; a crop of the
photo is the same camera with its pixels shifted and scaled (OpenCV camera axes: x right, y down,
z forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from models.errors import HeadsplatError
from models.head_model import HeadModel
from models.latent import NUM_EXPRESSIONS, Identity
from models.transforms import euler_to_matrix
from renderers import Camera


def check_portrait(image: np.ndarray, identity: Identity) -> None:
    """A HeadsplatError unless `image` is RGB uint8 [H, W, 3] and the size `identity` was fitted on."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise HeadsplatError("the portrait must be an RGB uint8 image")
    if tuple(identity.image_size) != (image.shape[1], image.shape[0]):
        raise HeadsplatError(
            f"the identity was fitted on a {identity.image_size[0]}x{identity.image_size[1]} image, "
            f"not this {image.shape[1]}x{image.shape[0]} one"
        )


@dataclass
class FittedHead:
    """The fitted head at rest: the portrait's identity, expression and pose as tensors, and its mesh."""

    identity: Tensor  # [1, K]
    expression: Tensor  # [1, 53] the portrait's own expression
    rotation: Tensor  # [3] radians, the head's pose in the photo
    translation: Tensor  # [3] cm
    shape: Tensor  # [V, 3] the mesh with that expression, unposed (the avatar's canonical world)
    posed: Tensor  # [V, 3] the same mesh posed as in the photo (the photo's world)
    pivot: Tensor  # [3] the head model's pivot

    def neck_weights(self, neck_blend_cm: tuple[float, float]) -> Tensor:
        """Share [V] of the head's motion each vertex follows (`neck_blend` of its height on `shape`)."""
        return neck_blend(self.shape[:, 1], neck_blend_cm)

    def height(self, points: Tensor) -> Tensor:
        """Height [N] (y, cm) on the head model, in its own frame before the photo's pose, of world points
        [N, 3] in the photo's world (the inverse of the fitted pose: R^T (x - pivot - t) + pivot)."""
        rest_rot = euler_to_matrix(self.rotation[None])[0]
        return ((points - self.pivot - self.translation) @ rest_rot + self.pivot)[:, 1]


def neck_blend(height: Tensor, neck_blend_cm: tuple[float, float]) -> Tensor:
    """Share of the head's motion at a height (y, cm, on the head model): 0 below the first of the neck
    heights, 1 above the second, linear between."""
    low, high = neck_blend_cm
    return ((height - low) / (high - low)).clamp(0, 1)


def fitted_head(identity: Identity, rest_expression: np.ndarray, head: HeadModel) -> FittedHead:
    """The fitted head of a portrait (`rest_expression` [53] is the portrait's fitted expression)."""
    ident = torch.from_numpy(np.asarray(identity.coefficients, np.float32))[None]
    expression = torch.from_numpy(np.asarray(rest_expression, np.float32).reshape(1, NUM_EXPRESSIONS))
    rotation = torch.from_numpy(np.asarray(identity.rotation, np.float32))
    translation = torch.from_numpy(np.asarray(identity.translation, np.float32))
    with torch.no_grad():
        shape = head.shape(ident, expression)[0]
        posed = head.pose(shape[None], rotation[None], translation[None])[0]
    return FittedHead(ident, expression, rotation, translation, shape, posed, head.pivot)


def portrait_camera(identity: Identity, crop_box: tuple[float, float, float, float], size: int) -> Camera:
    """The camera of a square crop (x0, y0, x1, y1) of the portrait, resampled to size × size pixels."""
    width, height = identity.image_size
    if identity.focal_px <= 0 or width <= 0 or height <= 0:
        raise HeadsplatError(
            "the identity has no fitted camera (focal length and image size); fit the portrait first"
        )
    x0, y0, x1, y1 = crop_box
    scale = size / (x1 - x0)
    world_to_camera = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    return Camera(
        fx=identity.focal_px * scale,
        fy=identity.focal_px * scale,
        cx=(width / 2.0 - x0) * scale,
        cy=(height / 2.0 - y0) * scale,
        width=size,
        height=size,
        world_to_camera=world_to_camera,
    )


def project_points(points: Tensor, camera: Camera) -> Tensor:
    """World points [..., 3] → pixel x, pixel y and camera depth [..., 3] through `camera`."""
    m = camera.world_to_camera
    cam = points @ m[:3, :3].T + m[:3, 3]
    z = cam[..., 2:3]
    xy = cam[..., :2] / z.clamp_min(1e-6) * torch.tensor([camera.fx, camera.fy]) + torch.tensor(
        [camera.cx, camera.cy]
    )
    return torch.cat([xy, z], dim=-1)


def pixel_of(points: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
    """Row and column [N] of the pixel each world point [N, 3] projects into (clamped to the image)."""
    px = project_points(points, camera)
    col = px[:, 0].floor().long().clamp(0, camera.width - 1)
    row = px[:, 1].floor().long().clamp(0, camera.height - 1)
    return row, col


def crop_box_for_head(
    points_px: np.ndarray, image_size: tuple[int, int], scale: float
) -> tuple[float, float, float, float]:
    """A square box around projected head points [N, 2], `scale` times their larger extent, centred on them."""
    lo, hi = points_px.min(0), points_px.max(0)
    centre = 0.5 * (lo + hi)
    side = float(scale * max(hi - lo))
    # Lift the box a little: hair sits above the fitted scalp more than the neck hangs below the chin.
    centre[1] -= 0.04 * side
    return (centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2)


def head_crop_box(
    fit: FittedHead, identity: Identity, head: HeadModel, neck_top_cm: float, scale: float
) -> tuple[float, float, float, float]:
    """The crop box (photo pixels) around the fitted head above `neck_top_cm` (y, rest mesh), `scale`
    times its larger extent; a HeadsplatError when the fit put the head behind the camera."""
    full = portrait_camera(identity, (0, 0, *identity.image_size), identity.image_size[0])
    head_verts = torch.cat([head.region_vertices("face"), head.region_vertices("head_and_neck")])
    # The crop is sized on the head, not the neck: the neck's lower ring would push the face up.
    above_neck = head_verts[fit.shape[head_verts, 1] > neck_top_cm]
    with torch.no_grad():
        head_px = project_points(fit.posed[above_neck], full).numpy()
    if np.any(head_px[:, 2] <= 0):
        raise HeadsplatError("the fitted head is behind the camera; the fit failed")
    return crop_box_for_head(head_px[:, :2], identity.image_size, scale)


def crop_image(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The box of an RGB uint8 photo resampled to size × size float32 in [0, 1] (edges replicated)."""
    x0, y0, x1, y1 = box
    s = size / (x1 - x0)
    affine = np.array([[s, 0, -x0 * s + 0.5 * s - 0.5], [0, s, -y0 * s + 0.5 * s - 0.5]], np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(image, affine, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    return crop.astype(np.float32) / 255.0

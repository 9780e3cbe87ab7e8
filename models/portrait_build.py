"""The phases of building a portrait avatar (`models.gaussian_avatar.build_portrait_avatar` runs them).

Pixels the fitted mesh covers become mesh-bound Gaussians; pixels in a band outside its silhouette follow
the head rigidly; face and eye triangles no pixel sees get fill Gaussians; the crop with everything that
may move inpainted is the static background; a few render-and-correct passes sharpen the colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from models.errors import HeadsplatError
from models.head_model import HeadModel
from models.latent import NUM_EXPRESSIONS
from models.mesh_binding import MeshBinding, surface_points, triangle_frames
from models.mouth_interior import MOUTH_PARTS, REFERENCE_SKIN_RGB
from models.photo_view import pixel_of, project_points
from models.transforms import matrix_to_quaternion
from renderers import Camera, composite_over, rasterize
from renderers.mesh_raster import MeshFragments, rasterize_mesh

if TYPE_CHECKING:
    from models.gaussian_avatar import PortraitAvatar

#: The largest render size `PortraitAvatarConfig(crop_size=None)` picks.
AUTO_CROP_MAX = 512

#: Coarse part labels of the head model's triangles (see `triangle_labels`).
REGION_ID = {"face": 0, "head_and_neck": 1, "eyes": 2, "mouth": 3, "other": 4}


def auto_crop_size(box: tuple[float, float, float, float]) -> int:
    """Render size for a crop box (x0, y0, x1, y1): its side in photo pixels, kept within [64, AUTO_CROP_MAX]."""
    return int(np.clip(round(float(box[2] - box[0])), 64, AUTO_CROP_MAX))


def triangle_labels(head: HeadModel) -> np.ndarray:
    """Coarse part label [T] of every triangle (see REGION_ID)."""
    labels = np.full(len(head.triangles), REGION_ID["other"], np.int8)
    parts = {
        "face": "face",
        "head_and_neck": "head_and_neck",
        "eyeball_left": "eyes",
        "eyeball_right": "eyes",
    }
    parts.update(dict.fromkeys(MOUTH_PARTS, "mouth"))
    for name, label in parts.items():
        labels[head.region_triangles(name).numpy()] = REGION_ID[label]
    return labels


def camera_facing_quat(camera: Camera) -> Tensor:
    """The wxyz rotation [4] taking camera axes to world axes (a Gaussian facing the camera)."""
    return matrix_to_quaternion(camera.world_to_camera[:3, :3].T)


@dataclass
class PixelLayer:
    """The crop's head pixels, one Gaussian each, bound to the triangle each pixel sees."""

    frags: MeshFragments  # the fitted mesh's z-buffer in the crop
    frames: tuple[Tensor, Tensor]  # triangle_frames of the fitted mesh
    hit: np.ndarray  # [S, S] bool, the pixels the mesh covers
    binding: MeshBinding  # [Np] one Gaussian per covered pixel, in row-major pixel order
    colors: Tensor  # [Np, 3] the crop's colours there
    means: Tensor  # [Np, 3] where each pixel's ray meets the mesh, cm
    on_face: Tensor  # [Np] bool, the pixel sees the face region


def bind_pixels(
    head: HeadModel,
    rest_mesh: Tensor,  # [V, 3] the fitted mesh as in the photo, cm
    camera: Camera,
    crop: np.ndarray,  # [S, S, 3] float32
    labels: np.ndarray,  # [T] triangle_labels(head)
    pixel_sigma: float,
    thickness: float,
) -> PixelLayer:
    """One flat, camera-facing Gaussian per pixel the mesh covers, `pixel_sigma` pixels wide."""
    size = crop.shape[0]
    with torch.no_grad():
        points = project_points(rest_mesh, camera)
        frames = triangle_frames(rest_mesh, head.triangles)
    frags = rasterize_mesh(points.numpy(), head.triangles.numpy(), size, size)
    hit = frags.triangle >= 0
    if hit.sum() < 0.02 * size * size:
        raise HeadsplatError("the fitted head covers almost none of the crop; the fit failed")
    hit_label = np.where(hit, labels[np.maximum(frags.triangle, 0)], -1)
    # Pixels whose nearest surface is the back of the head or inner geometry seen through a gap are
    # still bound to it: at the fitted pose they are what that pixel shows.
    ys, xs = np.nonzero(hit)
    tri = torch.from_numpy(frags.triangle[ys, xs].astype(np.int64))
    bary = torch.from_numpy(frags.barycentric[ys, xs])
    depth = frags.depth[ys, xs]
    footprint = torch.from_numpy(depth / camera.fx)  # cm per pixel at each pixel's depth
    sigma = pixel_sigma * footprint
    scales = torch.stack([sigma, sigma, sigma * thickness], dim=-1)
    facing = camera_facing_quat(camera).expand(len(tri), 4)
    binding = MeshBinding.from_world(
        rest_mesh, head.triangles, tri, bary, torch.zeros(len(tri)), facing.contiguous(), scales, frames
    )
    return PixelLayer(
        frags=frags,
        frames=frames,
        hit=hit,
        binding=binding,
        colors=torch.from_numpy(crop[ys, xs]),
        means=surface_points(rest_mesh, head.triangles, tri, bary),
        on_face=torch.from_numpy(hit_label[ys, xs] == REGION_ID["face"]),
    )


def photo_light(pixels: PixelLayer) -> Tensor:
    """The photo's light relative to neutral [3]: its mean face colour over REFERENCE_SKIN_RGB."""
    reference = torch.tensor(REFERENCE_SKIN_RGB)
    skin_rgb = pixels.colors[pixels.on_face].mean(0) if pixels.on_face.any() else reference
    return skin_rgb / reference


@dataclass
class RigidBand:
    """Pixels in a band outside the head's silhouette (hair, ears' rims, the collar), which follow the
    head rigidly with a weight that falls off with distance, so nothing tears at the silhouette."""

    ring: np.ndarray  # [S, S] bool, the band's pixels
    means: Tensor  # [Nr, 3] rest positions, cm
    quats: Tensor  # [Nr, 4]
    scales: Tensor  # [Nr, 3]
    colors: Tensor  # [Nr, 3]
    weights: Tensor  # [Nr] how much of the head's motion each follows, 0..1


def rigid_band(
    pixels: PixelLayer,
    camera: Camera,
    crop: np.ndarray,
    width_px: float,
    pixel_sigma: float,
    thickness: float,
) -> RigidBand:
    """One camera-facing Gaussian per pixel within `width_px` of the silhouette, at its nearest covered
    pixel's depth."""
    hit, frags = pixels.hit, pixels.frags
    dist_out, nearest = ndimage.distance_transform_edt(~hit, return_indices=True)
    weight_img = np.clip(1.0 - dist_out / width_px, 0.0, 1.0).astype(np.float32)
    ring = (~hit) & (weight_img > 0)
    ry, rx = np.nonzero(ring)
    ring_depth = frags.depth[nearest[0][ry, rx], nearest[1][ry, rx]]
    means = _unproject(rx + 0.5, ry + 0.5, ring_depth, camera)
    ring_sigma = torch.from_numpy(pixel_sigma * ring_depth / camera.fx)
    weights = torch.from_numpy(weight_img[ry, rx]) ** 1.5  # ease out: the far band barely moves
    return RigidBand(
        ring=ring,
        means=means,
        quats=camera_facing_quat(camera).expand(len(means), 4).contiguous(),
        scales=torch.stack([ring_sigma, ring_sigma, ring_sigma * thickness], -1).float(),
        colors=torch.from_numpy(crop[ry, rx]).float(),
        weights=weights.float(),
    )


def _unproject(x: np.ndarray, y: np.ndarray, depth: np.ndarray, camera: Camera) -> Tensor:
    """Pixel coordinates and camera depths → world points [N, 3]."""
    cam = np.stack([(x - camera.cx) / camera.fx * depth, (y - camera.cy) / camera.fy * depth, depth], -1)
    m = camera.world_to_camera.numpy().astype(np.float64)
    world = (cam - m[:3, 3]) @ m[:3, :3]  # R^T (x - t), written row-wise
    return torch.from_numpy(world).float()


def hidden_fill(
    head: HeadModel, rest_mesh: Tensor, pixels: PixelLayer, labels: np.ndarray
) -> tuple[MeshBinding, Tensor]:
    """One Gaussian per face/eye triangle that no pixel sees, a little behind the surface, coloured
    by the nearest visible pixel; and their colours [N, 3]."""
    seen = np.zeros(len(head.triangles), bool)
    seen[np.unique(pixels.frags.triangle[pixels.hit])] = True
    candidates = np.nonzero(~seen & np.isin(labels, [REGION_ID["face"], REGION_ID["eyes"]]))[0]
    # Only eyelids and lips fold open in motion; hidden skin elsewhere (under the chin, behind the
    # ears) stays hidden, so it needs no fill.
    centroids = rest_mesh[head.triangles[torch.from_numpy(candidates)]].mean(dim=1)
    marks = rest_mesh[head.landmarks68]
    zones = [(marks[36:42].mean(0), 2.2), (marks[42:48].mean(0), 2.2), (marks[48:68].mean(0), 3.2)]
    near = torch.zeros(len(candidates), dtype=torch.bool)
    for centre, radius in zones:
        near |= (centroids - centre).norm(dim=-1) < radius
    candidates, centroids = candidates[near.numpy()], centroids[near]
    tri = torch.from_numpy(candidates)
    frame, size = pixels.frames
    _, idx = cKDTree(pixels.means.numpy()).query(centroids.numpy())
    colors = pixels.colors[torch.from_numpy(idx)]
    k = size[tri]
    bary = torch.full((len(tri), 3), 1.0 / 3.0)
    scales = torch.stack([0.6 * k, 0.6 * k, 0.1 * k], -1)
    binding = MeshBinding.from_world(
        rest_mesh,
        head.triangles,
        tri,
        bary,
        -0.3 * k,
        matrix_to_quaternion(frame[tri]),
        scales,
        pixels.frames,
    )
    return binding, colors.float()


def inpainted_background(crop: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crop [S, S, 3] with the `moving` [S, S] pixels (grown a little) inpainted, and where the
    avatar's Gaussians may draw [S, S] float32 (the grown region)."""
    size = crop.shape[0]
    moving = moving.astype(np.uint8)
    grow = max(3, int(0.02 * size))
    moving_grown = cv2.dilate(moving, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    inpainted = (
        cv2.inpaint((crop * 255).astype(np.uint8), moving_grown, 5, cv2.INPAINT_TELEA).astype(np.float32)
        / 255.0
    )
    # Only what the Gaussians cover needs inpainting; just outside, the photo itself is the truth.
    background = np.where(moving[..., None] > 0, inpainted, crop)
    return background, moving_grown.astype(np.float32)


def refine_colours(avatar: PortraitAvatar, crop: np.ndarray, n_pixels: int, steps: int) -> None:
    """Render the avatar at rest, compare with the photo, push each pixel Gaussian's colour (the
    first `n_pixels` bound ones, and the rigid band's) by its pixel's error, `steps` times.

    Overlapping Gaussians blur the image slightly; a few of these fixed-point steps undo most of it.
    """
    if steps <= 0:
        return
    zero3, zero_expr = torch.zeros(3), torch.zeros(NUM_EXPRESSIONS)
    rest = avatar.gaussians(zero_expr, zero3, zero3)
    pix_y, pix_x = pixel_of(rest.means[:n_pixels], avatar.camera)
    ring_y, ring_x = pixel_of(avatar.rigid_means, avatar.camera)
    for _ in range(steps):
        out = rasterize(avatar.gaussians(zero_expr, zero3, zero3), avatar.camera, backend="cpu")
        rendered = composite_over(out.rgb.numpy(), out.alpha.numpy(), avatar.background)
        error = torch.from_numpy(crop - rendered)
        avatar.bound_colors[:n_pixels] = (avatar.bound_colors[:n_pixels] + error[pix_y, pix_x]).clamp(0, 1)
        avatar.rigid_colors[:] = (avatar.rigid_colors + error[ring_y, ring_x]).clamp(0, 1)

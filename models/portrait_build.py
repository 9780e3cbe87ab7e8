"""The phases of building a portrait avatar (`models.gaussian_avatar.build_portrait_avatar` runs them).

Pixels the fitted mesh covers become mesh-bound Gaussians lying on its surface; eyelids and lips get fill
Gaussians where they can open; the crop with everything that may move inpainted is the static
background; a few render-and-correct passes sharpen the colours. The hair, the still body and the
backing a head turn needs are models.portrait_turns.
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
from models.mesh_binding import MeshBinding, local_coordinates, surface_points, triangle_frames
from models.mouth_interior import MOUTH_PARTS, REFERENCE_SKIN, REFERENCE_SKIN_RGB, MouthPalette
from models.photo_view import pixel_of, project_points
from models.portrait_turns import surface_splats, unproject
from models.transforms import matrix_to_quaternion
from renderers import Camera
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
    in_mouth: Tensor  # [Np] bool, the pixel sees inside the mouth (teeth, gums, tongue, socket)


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
    means = surface_points(rest_mesh, head.triangles, tri, bary)
    # Each pixel's Gaussian lies on the surface it sees (see models.portrait_turns.surface_splats), so a
    # surface a turn brings towards the camera widens instead of breaking up.
    quats, scales = surface_splats(means, frames[0][tri][:, :, 2], camera, pixel_sigma, thickness)
    binding = MeshBinding.from_world(
        rest_mesh, head.triangles, tri, bary, torch.zeros(len(tri)), quats, scales, frames
    )
    return PixelLayer(
        frags=frags,
        frames=frames,
        hit=hit,
        binding=binding,
        colors=torch.from_numpy(crop[ys, xs]),
        means=means,
        on_face=torch.from_numpy(hit_label[ys, xs] == REGION_ID["face"]),
        in_mouth=torch.from_numpy(hit_label[ys, xs] == REGION_ID["mouth"]),
    )


def skin_colour(pixels: PixelLayer) -> Tensor:
    """The photo's mean face colour [3] (REFERENCE_SKIN_RGB when no pixel sees the face)."""
    return pixels.colors[pixels.on_face].mean(0) if pixels.on_face.any() else torch.tensor(REFERENCE_SKIN_RGB)


#: Pixels between the lips at most this far (pixels of a 512 crop) from a tooth are bound to the teeth.
MAX_TEETH_DISTANCE_PX = 3.0
#: Face triangles this close (cm) to the inner lip line seal an open-mouth photo's lips when they close.
LIP_SEAL_CM = 0.6
#: Lips further apart than this (cm, inner-lip landmarks of the fitted mesh) are parted in the photo.
PARTED_LIPS_CM = 0.3


@dataclass
class PhotoMouth:
    """What the photo shows between its lips (all empty for closed lips)."""

    opening: np.ndarray  # [S, S] bool, the crop's pixels between the fitted inner lips when they are parted
    dark_share: float  # share of those darker than half the skin's lightness (the mouth's cavity)
    bright_share: float  # share lighter than 0.9 of the skin's (teeth)
    teeth_rgb: tuple[float, float, float] | None  # the teeth's colour, where they show

    @property
    def open(self) -> bool:
        """Whether the photo caught the mouth open (mid-word), not closed or smiling: its parted lips show
        more dark cavity than teeth."""
        return bool(self.opening.any()) and self.dark_share > self.bright_share


def photo_mouth(
    head: HeadModel, rest_mesh: Tensor, camera: Camera, crop: np.ndarray, skin_rgb: Tensor
) -> PhotoMouth:
    """The pixels between the fitted mesh's inner lips (when they are parted) and what they show."""
    size = crop.shape[0]
    opening = np.zeros((size, size), bool)
    marks = rest_mesh[head.landmarks68]
    gap = float((marks[[61, 62, 63]] - marks[[67, 66, 65]]).norm(dim=-1).max())
    if gap > PARTED_LIPS_CM:
        with torch.no_grad():
            ring = project_points(marks[60:68], camera)[:, :2].numpy()
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(ring * 16 - 8).astype(np.int32)], 1, shift=4)  # pixel centres at +0.5
        opening = mask > 0
    if not opening.any():
        return PhotoMouth(opening, 0.0, 0.0, None)
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)
    skin_lab = cv2.cvtColor(skin_rgb.numpy().reshape(1, 1, 3).astype(np.float32), cv2.COLOR_RGB2LAB)[0, 0]
    skin_l = float(skin_lab[0])
    # The fitted lip line is seldom exact: just outside it, what is darker than lips or less red than
    # skin (the mouth's dark, teeth) is the mouth too; left on the lips, it would show between them when
    # they close.
    reach = max(1, round(4 * size / 512))
    band = cv2.dilate(opening.astype(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)) > 0
    inside_like = (lab[..., 0] < 0.5 * skin_l) | (lab[..., 1] < skin_lab[1] - 8.0)
    opening = opening | (band & inside_like)
    lightness = lab[..., 0][opening]
    dark, bright = lightness < 0.5 * skin_l, lightness > 0.9 * skin_l
    teeth_rgb = None
    if bright.sum() >= 20:
        teeth_rgb = tuple(float(v) for v in np.median(crop[opening][bright], axis=0))
    return PhotoMouth(opening, float(dark.mean()), float(bright.mean()), teeth_rgb)


def mouth_palette(crop: np.ndarray, skin_rgb: Tensor, mouth: PhotoMouth) -> MouthPalette:
    """The photo's exposure and white balance for the mouth interior, and its own teeth's colour.

    The white balance is the crop's grey-world cast (its mean colour over that colour's mean), half
    strength and within ±12%: enough to keep ivory teeth from looking blue in a warm photo, never the
    skin's hue.
    """
    mean = crop.reshape(-1, 3).mean(0)
    cast = 1.0 + 0.5 * (mean / max(float(mean.mean()), 1e-3) - 1.0)
    balance = np.clip(cast, 0.88, 1.12)
    return MouthPalette(
        exposure=float(skin_rgb.mean()) / REFERENCE_SKIN,
        white_balance=tuple(float(v) for v in balance / balance.mean()),
        teeth_rgb=mouth.teeth_rgb,
    )


def bind_mouth_pixels(
    head: HeadModel,
    rest_mesh: Tensor,
    camera: Camera,
    pixels: PixelLayer,
    mouth: PhotoMouth,
    pixel_sigma: float,
    thickness: float,
) -> Tensor:
    """Rebind the pixels between parted lips to ICT's teeth, each to the front surface of the tooth the
    camera sees nearest to it: the upper teeth (rigid with the skull) or the lower ones (which follow the
    jaw). The photo's own teeth, gums and tongue then move as teeth do, show where the mouth opens, and go
    behind the lips when it closes. Returns the rebound pixels' rows [M] (empty for closed lips)."""
    none = torch.zeros(0, dtype=torch.long)
    if not mouth.opening.any():
        return none
    size = mouth.opening.shape[0]
    teeth = head.region_triangles("teeth")
    with torch.no_grad():
        points = project_points(rest_mesh, camera).numpy()
    frags = rasterize_mesh(points, head.triangles[teeth].numpy(), size, size)
    covered = frags.triangle >= 0
    if not covered.any():
        return none
    distance, (near_y, near_x) = ndimage.distance_transform_edt(~covered, return_indices=True)
    row_of = np.full(pixels.hit.shape, -1, np.int64)
    row_of[pixels.hit] = np.arange(int(pixels.hit.sum()))
    oy, ox = np.nonzero(mouth.opening & pixels.hit)
    ny, nx = near_y[oy, ox], near_x[oy, ox]
    tri = teeth[torch.from_numpy(frags.triangle[ny, nx].astype(np.int64))]
    depth = frags.depth[ny, nx]
    world = unproject(ox + 0.5, oy + 0.5, depth, camera)
    # A pixel off the teeth (the tongue, the dark of the mouth) is bound to the nearest of its row's big
    # triangles instead: off a small one, the slightest bend of the triangle would throw it about.
    far = distance[oy, ox] > MAX_TEETH_DISTANCE_PX * size / 512
    if far.any():
        frame_size = pixels.frames[1]
        for row in ("teeth_upper", "teeth_lower"):
            own = head.region_triangles(row)
            big = own[frame_size[own] >= frame_size[own].quantile(0.75)]
            pick = torch.from_numpy(far) & torch.isin(tri, own)
            if pick.any():
                centres = rest_mesh[head.triangles[big]].mean(1)
                _, idx = cKDTree(centres.numpy()).query(world[pick].numpy())
                tri[pick] = big[torch.from_numpy(idx)]
    bary, offset_cm = local_coordinates(rest_mesh, head.triangles, tri, world)
    sigma = torch.from_numpy(pixel_sigma * depth / camera.fx).float()
    moved = MeshBinding.from_world(
        rest_mesh,
        head.triangles,
        tri,
        bary,
        offset_cm,
        camera_facing_quat(camera).expand(len(tri), 4).contiguous(),
        torch.stack([sigma, sigma, sigma * thickness], -1),
        pixels.frames,
    )
    rows = torch.from_numpy(row_of[oy, ox])
    for name in MeshBinding.FIELDS:
        getattr(pixels.binding, name)[rows] = getattr(moved, name)
    pixels.means[rows] = world
    pixels.on_face[rows] = False
    pixels.in_mouth[rows] = True
    return rows


def hidden_fill(
    head: HeadModel, rest_mesh: Tensor, pixels: PixelLayer, labels: np.ndarray, seal_lips: bool = False
) -> tuple[MeshBinding, Tensor]:
    """One Gaussian per face/eye triangle that no pixel sees, a little behind the surface, coloured
    by the nearest visible pixel; and their colours [N, 3].

    With `seal_lips` (the photo caught the mouth open) the lips' inner faces get them too, seen or not: they
    turn edge-on as the lips close, and the fill behind them keeps the closed mouth sealed with lip colour.
    """
    seen = np.zeros(len(head.triangles), bool)
    seen[np.unique(pixels.frags.triangle[pixels.hit])] = True
    seal = np.zeros(len(head.triangles), bool)
    if seal_lips:
        face = np.nonzero(labels == REGION_ID["face"])[0]
        centres = rest_mesh[head.triangles[torch.from_numpy(face)]].mean(dim=1)
        inner = rest_mesh[head.landmarks68[60:68]]
        near_lip_edge = torch.cdist(centres, inner).min(dim=1).values < LIP_SEAL_CM
        seal[face[near_lip_edge.numpy()]] = True
        seen[seal] = False
    kinds = [REGION_ID["face"], REGION_ID["eyes"], REGION_ID["head_and_neck"]]
    candidates = np.nonzero(~seen & np.isin(labels, kinds))[0]
    # Eyelids and lips fold open in motion, and the underside of the chin comes into view when the jaw
    # closes or the head tilts up; hidden skin elsewhere (behind the ears) stays hidden and needs no fill.
    centroids = rest_mesh[head.triangles[torch.from_numpy(candidates)]].mean(dim=1)
    marks = rest_mesh[head.landmarks68]
    zones = [
        (marks[36:42].mean(0), 2.2),
        (marks[42:48].mean(0), 2.2),
        (marks[48:68].mean(0), 3.2),
        (marks[8] + 0.35 * (marks[8] - marks[33]), 3.5),  # under the chin
    ]
    near = torch.zeros(len(candidates), dtype=torch.bool)
    for centre, radius in zones:
        near |= (centroids - centre).norm(dim=-1) < radius
    candidates, centroids = candidates[near.numpy()], centroids[near]
    tri = torch.from_numpy(candidates)
    frame, size = pixels.frames
    # Inner lips and lids take the colour of the nearest skin, lip or eye pixel, never of the teeth or
    # the dark mouth behind them (which would smear into closing lips).
    source = ~pixels.in_mouth if (~pixels.in_mouth).any() else torch.ones_like(pixels.in_mouth)
    _, idx = cKDTree(pixels.means[source].numpy()).query(centroids.numpy())
    colors = pixels.colors[source][torch.from_numpy(idx)]
    k = size[tri]
    bary = torch.full((len(tri), 3), 1.0 / 3.0)
    # The seal's are round, not flat: they must cover the gap seen edge-on, between closed lips.
    depth = torch.where(torch.from_numpy(seal[candidates]), 0.6 * k, 0.1 * k)
    scales = torch.stack([0.6 * k, 0.6 * k, depth], -1)
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
    # Only what the Gaussians cover needs inpainting, and the outline's own pixels (2 px at a 512 crop:
    # the head's colour mixed into the background's, they would stay behind as a thin dark contour when
    # the head turns away); further out the photo itself is the truth.
    edge = max(1, round(2 * size / 512))
    covered = cv2.dilate(moving, np.ones((2 * edge + 1, 2 * edge + 1), np.uint8))
    background = np.where(covered[..., None] > 0, inpainted, crop)
    return background, moving_grown.astype(np.float32)


def refine_colours(
    avatar: PortraitAvatar, crop: np.ndarray, refined: Tensor, rigid_refined: Tensor, steps: int
) -> None:
    """Render the avatar at rest, compare with the photo, push each pixel Gaussian's colour (the bound
    ones at indices `refined` and the rigid ones at `rigid_refined`) by its pixel's error, `steps` times.

    Overlapping Gaussians blur the image slightly; a few of these fixed-point steps undo most of it.
    """
    if steps <= 0:
        return
    zero3, zero_expr = torch.zeros(3), torch.zeros(NUM_EXPRESSIONS)
    vertices = avatar.mesh(zero_expr[None], zero3[None], zero3[None])[0]
    means, _, _ = avatar.binding.subset(refined).pose(vertices, avatar.head.triangles)
    pix_y, pix_x = pixel_of(means, avatar.camera)
    ring_y, ring_x = pixel_of(avatar.rigid_means[rigid_refined], avatar.camera)
    for _ in range(steps):
        rendered = avatar.render(zero_expr, zero3, zero3, backend="cpu")
        error = torch.from_numpy(crop - rendered)
        avatar.bound_colors[refined] = (avatar.bound_colors[refined] + error[pix_y, pix_x]).clamp(0, 1)
        avatar.rigid_colors[rigid_refined] = (
            avatar.rigid_colors[rigid_refined] + error[ring_y, ring_x]
        ).clamp(0, 1)

"""What lets a portrait avatar turn its head (issue #16): splats that lie on the surface, the hair as a
shell that turns with the head, the body held still, a backing on the surfaces a turn reveals, and the
head drawn as a solid.

- `surface_splats`: a pixel's Gaussian lies in the tangent plane of the surface it sees and covers that
  surface's footprint of the pixel (long along the slope where the surface is seen obliquely). At rest it
  projects to the same round pixel as a camera-facing disc; when the surface turns towards the camera it
  widens with the surface, so the cheek a turn brings into view stays closed instead of breaking up.
- `hair_shell`: the person's matte (models.segmentation) outside the fitted mesh is hair, hats, ears'
  rims and glasses' arms. Each of its pixels gets a round Gaussian at the depth of the head's outline
  (blurred along it: a shell around the scalp shaped like the photo's outline), following the head's
  rotation with the neck's weight at its height: fully above the jaw, fading to the body's where long hair
  lies on the shoulders. Round, not flat, so a turned shell never goes edge-on; a coarser layer behind it.
- `body_pixels`: pixels on the fitted neck that show the collar, a tie or the background stay still, in
  front of the neck, which turns behind them.
- `shown_pixels`, `backing`: face, scalp and neck triangles that a head turn within the sweep shows at
  more pixels than the photo gave them (seen edge-on, or not at all: the far side of the nose, under the
  jaw) are tiled a little behind the surface with Gaussians coloured from their mirror image on the other
  side of the face where that was seen, else from the nearest seen pixel.
- `solid_layer`: where the rendered head covers a pixel 90% or more it is drawn opaque, its colour
  normalised, so the gaps a sub-pixel shift opens between pixel-sized Gaussians never show the background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from models.head_model import HeadModel
from models.mesh_binding import MeshBinding, surface_points
from models.mesh_symmetry import mirror_points
from models.photo_view import FittedHead, neck_blend, project_points
from models.surface_placement import surface_binding
from models.transforms import euler_to_matrix, matrix_to_quaternion
from renderers import Camera
from renderers.mesh_raster import rasterize_mesh

#: Most a surface splat stretches along the slope (1 / cos of the viewing angle, clamped): pixels on a
#: nearly edge-on surface would otherwise become needles the length of the head.
MAX_STRETCH = 3.0

#: How far behind the surface `backing` puts its Gaussians, in pixels' footprints.
BACKING_PIXELS_BEHIND = 3.0

#: Pixels of a surface's largest view per backing Gaussian (they are about 3.5 pixels wide).
BACKING_PIXELS = 6.0

#: Width of a backing Gaussian relative to its tile (surface_binding's `overlap`): wide, so the layer is
#: opaque everywhere, seams between its tiles included.
BACKING_OVERLAP = 3.0

#: Largest standard deviation (pixels) of a backing Gaussian.
BACKING_MAX_PX = 3.0

#: A surface point with no photo pixel within this distance (cm) was not seen by the photo.
UNSEEN_CM = 0.3

#: Blur of the hair shell's depth along the head's outline, as a share of the crop's side.
SHELL_SMOOTH = 0.15

#: How far (cm) behind the hair's pixels the hair's coarser backing layer sits.
HAIR_BACKING_CM = 0.3

#: How far (pixels at a 512-pixel crop) the hair's backing reaches inside the head's outline.
HAIR_RIM_PX = 4.0

#: Colour distance (standard deviations of the face's CIELAB colours) beyond which a neck pixel is clothing.
BODY_SKIN_DISTANCE = 4.0

#: How far (cm) in front of the neck the collar's still pixels sit.
BODY_IN_FRONT_CM = 1.0

#: Head rotations (pitch, yaw, roll; degrees) whose newly visible surfaces `backing` covers: a
#: little beyond the ±20° yaw, ±10° pitch and ±5° roll natural speech reaches.
REVEAL_POSES = ((0, 24, 0), (0, -24, 0), (12, 0, 0), (-12, 0, 0), (10, 22, 6), (-10, -22, -6),
                (10, -22, -6), (-10, 22, 6))  # fmt: skip


def surface_splats(
    means: Tensor,  # [N, 3] world points on the surface, cm
    normals: Tensor,  # [N, 3] the surface's unit normals there
    camera: Camera,
    sigma_px: float,
    thickness: float,
) -> tuple[Tensor, Tensor]:
    """World rotations [N, 4] (wxyz) and scales [N, 3] (cm) of Gaussians lying on the surface that
    project to round `sigma_px`-pixel blobs: the pixel's footprint on the tangent plane, `thickness` of
    its width along the normal."""
    rot = camera.world_to_camera[:3, :3].double()
    cam = means.double() @ rot.T + camera.world_to_camera[:3, 3].double()
    n = normals.double() @ rot.T
    ray = cam / cam.norm(dim=-1, keepdim=True)
    facing = (n * ray).sum(-1, keepdim=True)
    n = torch.where(facing > 0, -n, n)  # the side the camera sees
    cos = (n * ray).sum(-1, keepdim=True).clamp(max=-1.0 / MAX_STRETCH)  # ≤ -1/MAX_STRETCH
    depth = cam[:, 2:3]
    zero = torch.zeros_like(depth)
    axes = []
    for step in (torch.cat([sigma_px * depth / camera.fx, zero, zero], -1),
                 torch.cat([zero, sigma_px * depth / camera.fy, zero], -1)):  # fmt: skip
        # Slide the screen-parallel step along the ray onto the tangent plane.
        axes.append(step - ray * (n * step).sum(-1, keepdim=True) / cos)
    width = sigma_px * depth / camera.fx
    cov = sum(a[:, :, None] * a[:, None, :] for a in axes)
    cov = cov + (thickness * width)[:, :, None] ** 2 * (n[:, :, None] * n[:, None, :])
    values, vectors = torch.linalg.eigh(cov)
    vectors = torch.where(torch.linalg.det(vectors)[:, None, None] < 0, -vectors, vectors)
    world = rot.T @ vectors  # columns: the Gaussian's axes in world terms
    return matrix_to_quaternion(world.float()), values.clamp_min(1e-12).sqrt().float()


@dataclass
class HairShell:
    """The photo's person outside the fitted mesh, as Gaussians that follow the head rigidly."""

    region: np.ndarray  # [S, S] bool, its pixels
    means: Tensor  # [Nh, 3] rest positions, cm
    quats: Tensor  # [Nh, 4]
    scales: Tensor  # [Nh, 3]
    colors: Tensor  # [Nh, 3]
    weights: Tensor  # [Nh] how much of the head's motion each follows, 0..1
    front: int  # the first `front` are the pixels' own; the rest, the coarser layer behind them


def hair_shell(
    crop: np.ndarray,  # [S, S, 3] float32
    matte: np.ndarray,  # [S, S] person probability of the crop
    hit: np.ndarray,  # [S, S] the pixels the fitted mesh covers
    depth: np.ndarray,  # [S, S] the fitted mesh's depth there (cm)
    camera: Camera,
    fit: FittedHead,
    neck_blend_cm: tuple[float, float],
    sigma_px: float,
) -> HairShell:
    """One round Gaussian per person pixel outside the mesh whose height puts it above the body (weight
    > 0), at the depth of the nearest mesh pixel."""
    person = matte > 0.5
    # Hair that shows through small gaps of the matte (between curls) is still hair: close them. Its soft
    # edge (hair mixed with the background, down to a 5% matte) goes with it, or it would stay behind as a
    # faint outline when the head turns away.
    person = cv2.morphologyEx(person.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    person = (person > 0) | ((matte > 0.05) & (cv2.dilate(person, np.ones((9, 9), np.uint8)) > 0))
    outside = person & ~hit
    ys, xs = np.nonzero(outside)
    shell = shell_depth(hit, depth, smooth_px=SHELL_SMOOTH * hit.shape[0])
    z = shell[ys, xs].astype(np.float64)
    means = unproject(xs + 0.5, ys + 0.5, z, camera)
    # The neck's blend weight at each pixel's height on the head model.
    weights = neck_blend(fit.height(means), neck_blend_cm)
    keep = (weights > 0).numpy()
    ys, xs, z, means, weights = ys[keep], xs[keep], z[keep], means[keep], weights[keep]
    region = np.zeros_like(hit)
    region[ys, xs] = True
    colors = torch.from_numpy(crop[ys, xs]).float()
    # Behind the hair's pixels, a coarser layer (every other pixel each way, four times as wide), so that
    # pixels pulled apart by a turn never let the background through. It reaches a few pixels inside the
    # head's outline too, under the face's pixels there, which a turn puts edge-on.
    rim = hit & (ndimage.distance_transform_edt(hit) <= HAIR_RIM_PX * hit.shape[0] / 512)
    back_region = region | (rim & person)
    by, bx = np.nonzero(
        back_region & ((np.arange(hit.shape[0]) % 2 == 0)[:, None]) & (np.arange(hit.shape[1]) % 2 == 0)
    )
    back_z = shell[by, bx].astype(np.float64) + HAIR_BACKING_CM
    back_means = unproject(bx + 0.5, by + 0.5, back_z, camera)
    back_weights = neck_blend(fit.height(back_means), neck_blend_cm)
    back_colors = torch.from_numpy(crop[by, bx]).float()
    means = torch.cat([means, back_means])
    sigma = torch.from_numpy(np.concatenate([sigma_px * z, 4 * sigma_px * back_z]) / camera.fx).float()
    n = len(means)
    return HairShell(
        region=region,
        means=means,
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).contiguous(),
        scales=torch.stack([sigma, sigma, sigma], -1),
        colors=torch.cat([colors, back_colors]),
        weights=torch.cat([weights, back_weights]).float(),
        front=len(ys),
    )


@dataclass
class BodyPixels:
    """Pixels on the fitted neck that show the body instead (a collar, a tie, the background beside a
    neck thinner than ICT's): they stay still, a little in front of the neck, so the neck turns behind
    the collar instead of dragging it along."""

    rows: Tensor  # [Nb] which of the pixel layer's pixels
    means: Tensor  # [Nb, 3] their still positions, cm
    scales: Tensor  # [Nb, 3]
    colors: Tensor  # [Nb, 3]


def body_pixels(
    means: Tensor,  # [Np] the pixel layer's surface points (cm)
    colors: Tensor,  # [Np, 3]
    on_face: Tensor,  # [Np] bool
    on_neck: Tensor,  # [Np] bool, the pixel sees the head-and-neck region
    matte: np.ndarray,  # [S, S] person probability of the crop
    pixel_rows: np.ndarray,  # [Np] each pixel's row in the crop
    pixel_cols: np.ndarray,  # [Np] each pixel's column
    camera: Camera,
    fit: FittedHead,
    below_cm: float,
    sigma_px: float,
) -> BodyPixels:
    """The neck pixels below `below_cm` (height on the head model) that are background (matte < 0.5) or
    not skin: further than BODY_SKIN_DISTANCE standard deviations (Mahalanobis, CIELAB) from the face's
    colours."""
    candidate = on_neck & (fit.height(means) < below_cm)
    lab = cv2.cvtColor(colors.numpy().astype(np.float32)[None], cv2.COLOR_RGB2LAB)[0].astype(np.float64)
    face = lab[on_face.numpy()]
    if len(face) < 50:
        not_skin = np.zeros(len(lab), bool)
    else:
        mean, cov = face.mean(0), np.cov(face.T) + np.eye(3)
        d = lab - mean
        not_skin = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) > BODY_SKIN_DISTANCE**2
    background = matte[pixel_rows, pixel_cols] < 0.5
    rows = torch.from_numpy(np.nonzero(candidate.numpy() & (not_skin | background))[0])
    # In front of the neck along the pixel's ray, by BODY_IN_FRONT_CM.
    z = project_points(means[rows], camera)[:, 2] - BODY_IN_FRONT_CM
    still = unproject(
        pixel_cols[rows.numpy()] + 0.5, pixel_rows[rows.numpy()] + 0.5, z.double().numpy(), camera
    )
    sigma = (sigma_px * z / camera.fx).float()
    return BodyPixels(rows, still, torch.stack([sigma, sigma, sigma], -1), colors[rows].float())


def shell_depth(hit: np.ndarray, depth: np.ndarray, smooth_px: float) -> np.ndarray:
    """Depth [S, S] of the hair's shell everywhere: the depth of the nearest pixel on the mesh's outline
    (the head's silhouette, where the hair leaves it), blurred along the outline by `smooth_px`, so
    neighbouring hair pixels never sit at very different depths: they would part when the head turns."""
    outline = hit & ~ndimage.binary_erosion(hit)
    if not outline.any():
        return np.where(hit, depth, 0.0)
    _, nearest = ndimage.distance_transform_edt(~outline, return_indices=True)
    extended = depth[nearest[0], nearest[1]].astype(np.float32)
    return cv2.GaussianBlur(extended, (0, 0), smooth_px, borderType=cv2.BORDER_REFLECT).astype(np.float64)


def unproject(x: np.ndarray, y: np.ndarray, depth: np.ndarray, camera: Camera) -> Tensor:
    """Pixel coordinates and camera depths → world points [N, 3]."""
    cam = np.stack([(x - camera.cx) / camera.fx * depth, (y - camera.cy) / camera.fy * depth, depth], -1)
    m = camera.world_to_camera.numpy().astype(np.float64)
    world = (cam - m[:3, 3]) @ m[:3, :3]  # R^T (x - t), written row-wise
    return torch.from_numpy(world).float()


def shown_pixels(
    head: HeadModel,
    rest_mesh: Tensor,  # [V, 3] the fitted mesh as in the photo
    rest_rotation: Tensor,  # [3, 3]
    centre: Tensor,  # [3] the head's pivot in the photo's world (pivot + rest translation)
    camera: Camera,
) -> np.ndarray:
    """The most pixels [T] each triangle covers at the rest pose and over REVEAL_POSES."""
    size = camera.height
    shown = np.zeros(len(head.triangles), np.int64)
    triangles = head.triangles.numpy()
    for degrees in ((0, 0, 0), *REVEAL_POSES):
        turn = euler_to_matrix(torch.tensor([math.radians(d) for d in degrees]))
        # Rotate about the head's pivot in its own frame (R = R_rest · R_motion, as the avatar poses it).
        a = rest_rotation @ turn @ rest_rotation.T
        moved = (rest_mesh - centre) @ a.T + centre
        frags = rasterize_mesh(project_points(moved, camera).numpy(), triangles, size, size)
        counts = np.bincount(frags.triangle[frags.triangle >= 0], minlength=len(triangles))
        shown = np.maximum(shown, counts)
    return shown


def backing(
    head: HeadModel,
    rest_mesh: Tensor,
    triangle_size: Tensor,  # [T] triangle_frames(rest_mesh, head.triangles)[1]
    camera: Camera,
    chosen: np.ndarray,  # [C] triangle indices
    pixels_shown: np.ndarray,  # [T] pixels each triangle covers at most (`shown_pixels`)
    pixel_means: Tensor,  # [Np, 3] where the photo's pixels meet the mesh
    pixel_colors: Tensor,  # [Np, 3]
    source: Tensor,  # [Np] bool, pixels whose colour may be copied (not the mouth's inside)
    pixels_per_gaussian: float = BACKING_PIXELS,
    cap: int = 60000,
) -> tuple[MeshBinding, Tensor]:
    """Gaussians tiling the `chosen` triangles a little behind the surface, one per `pixels_per_gaussian`
    pixels of their largest view, and their colours [N, 3]: the nearest pixel's, or where the photo did not
    see the surface (no pixel within 3 mm), the mirror image's on the other side of the face if a pixel saw
    that."""
    if len(chosen) == 0:
        empty = MeshBinding(
            torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 4),
            torch.zeros(0, 3),
        )  # fmt: skip
        return empty, torch.zeros(0, 3)
    tri = torch.from_numpy(chosen)
    wanted = int(min(cap, max(len(chosen), pixels_shown[chosen].sum() / pixels_per_gaussian)))
    area = 0.5 * torch.linalg.cross(
        rest_mesh[head.triangles[tri, 1]] - rest_mesh[head.triangles[tri, 0]],
        rest_mesh[head.triangles[tri, 2]] - rest_mesh[head.triangles[tri, 0]],
        dim=-1,
    ).norm(dim=-1)
    density = torch.from_numpy(pixels_shown[chosen]).float() / area.clamp_min(1e-6)
    binding = surface_binding(rest_mesh, head.triangles, tri, density, wanted, overlap=BACKING_OVERLAP)
    points = surface_points(rest_mesh, head.triangles, binding.triangle, binding.barycentric)
    # Behind the surface, far enough that none is sorted in front of the pixels it backs: a Gaussian a few
    # pixels wide on a steep slope spans that much depth.
    footprint = project_points(points, camera)[:, 2] / camera.fx  # cm per pixel
    k = triangle_size[binding.triangle]
    binding.offset[:] = -BACKING_PIXELS_BEHIND * footprint / k
    # No wider than BACKING_MAX_PX pixels: one Gaussian on a big, mostly hidden triangle (the scalp under
    # the hair, the back of the neck) would otherwise cost the renderer its whole width, every frame.
    widest = (BACKING_MAX_PX * footprint / k)[:, None]
    binding.scale[:] = torch.minimum(binding.scale, widest)
    tree = cKDTree(pixel_means[source].numpy())
    near, idx = tree.query(points.numpy())
    colors = pixel_colors[source][torch.from_numpy(idx)]
    mirror_tri, mirror_bary, found = mirror_points(head, binding.triangle, binding.barycentric)
    mirrored = surface_points(rest_mesh, head.triangles, mirror_tri.clamp_min(0), mirror_bary)
    dist, idx = tree.query(mirrored.numpy())
    use = found.numpy() & (near > UNSEEN_CM) & (dist < UNSEEN_CM)
    colors[torch.from_numpy(use)] = pixel_colors[source][torch.from_numpy(idx[use])]
    return binding, colors.float()


#: Coverage above which the moving layer is drawn opaque (see `solid_layer`).
SOLID_ALPHA = 0.9


def solid_layer(rgb: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rendered layer (premultiplied rgb [S, S, 3], alpha [S, S]) with alpha scaled by 1/SOLID_ALPHA and
    clipped at 1, its colour scaled with it (see models.gaussian_avatar.PortraitAvatar.render_layers)."""
    solid = np.minimum(alpha * np.float32(1.0 / SOLID_ALPHA), np.float32(1.0))
    gain = solid / np.maximum(alpha, np.float32(1e-6))
    return rgb * gain[..., None], solid

"""The phases of building a 3D head avatar (`models.head_avatar.build_head_avatar` runs them in order).

Each takes what the earlier phases made and returns its own part: where the photo sees the head, where
the surface Gaussians go, the photo's colours of them and of their mirror points, the colour field that
completes the rest, the mouth interior lit like the face, the neck's inner lining, and the final
render-and-correct passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from models.colour_completion import (
    FALLBACK_HAIR,
    SCLERA_RGB,
    PhotoSamples,
    colour_field,
    dominant_colour,
    hair_weight,
    pixels_above_head,
    robust_colour,
    sample_photo,
)
from models.errors import HeadsplatError
from models.head_model import HeadModel
from models.mesh_binding import MeshBinding, surface_points, triangle_frames
from models.mesh_symmetry import mirror_points, mirror_vertices
from models.mouth_interior import MOUTH_PARTS, MOUTH_SOCKET_RGB, REFERENCE_SKIN, MouthPalette, mouth_interior
from models.photo_view import pixel_of, project_points
from models.surface_placement import rim_binding, surface_binding
from renderers import Camera, Gaussians, rasterize
from renderers.mesh_raster import MeshFragments, rasterize_mesh

if TYPE_CHECKING:
    from models.head_avatar import HeadAvatar, HeadAvatarConfig

#: Parts covered by surface Gaussians and their relative density (Gaussians per cm² of rest surface).
SURFACE_DENSITY = {"face": 1.0, "head_and_neck": 0.3, "eyeball_left": 0.7, "eyeball_right": 0.7}
#: The skin colour used when the photo shows too little of the face.
FALLBACK_SKIN = (0.75, 0.6, 0.5)
#: Gaussians tiling the 32 teeth (gums, tongue and socket get models.mouth_interior.OTHER_SHARE of that each).
TEETH_GAUSSIANS = 8000


def surface_triangles(head: HeadModel) -> tuple[Tensor, np.ndarray]:
    """The triangles [C] the surface Gaussians cover (SURFACE_DENSITY's parts, in order) and each one's
    relative density [C]."""
    parts = [(head.region_triangles(n), w) for n, w in SURFACE_DENSITY.items()]
    chosen = torch.cat([t for t, _ in parts])
    return chosen, torch.cat([torch.full((len(t),), w) for t, w in parts]).numpy()


@dataclass
class PhotoCoverage:
    """What the photo sees of the head: a z-buffer of the surface and mouth triangles in the crop."""

    frags: MeshFragments  # triangle indices into the whole head mesh, -1 where none
    covered: np.ndarray  # [S, S] bool, the pixels the head covers


def photo_coverage(head: HeadModel, photo_mesh: Tensor, chosen: Tensor, camera: Camera) -> PhotoCoverage:
    """Rasterise the covered triangles `chosen` and the mouth at the photo's view; a HeadsplatError when the
    head covers almost none of the crop."""
    size = camera.width
    drawn = torch.cat([chosen, *(head.region_triangles(n) for n in MOUTH_PARTS)]).numpy()
    photo_px = project_points(photo_mesh, camera).numpy()
    frags = rasterize_mesh(photo_px, head.triangles.numpy()[drawn], size, size)
    covered = frags.triangle >= 0
    if covered.sum() < 0.02 * size * size:
        raise HeadsplatError("the fitted head covers almost none of the photo; the fit failed")
    frags.triangle = np.where(covered, drawn[np.maximum(frags.triangle, 0)], -1).astype(np.int32)
    return PhotoCoverage(frags, covered)


def surface_density(
    rest: Tensor,  # [V, 3] the rest mesh, cm
    triangles: Tensor,  # [T, 3]
    chosen: Tensor,  # [C] covered triangles
    region_density: np.ndarray,  # [C]
    coverage: PhotoCoverage,
    area_share: float,
) -> Tensor:
    """Gaussians per cm² [C] on each covered triangle: `area_share` of the budget by surface area (denser
    on the face and eyes), the rest by the photo's pixels, so what the photo shows in detail gets about
    one Gaussian per pixel."""
    corners = rest[triangles[chosen]].numpy()
    area = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    by_area = region_density * area
    frags, covered = coverage.frags, coverage.covered
    pixels = np.bincount(frags.triangle[covered], minlength=len(triangles)).astype(np.float64)[chosen.numpy()]
    want = area_share * by_area / by_area.sum() + (1 - area_share) * pixels / max(pixels.sum(), 1.0)
    return torch.from_numpy(want / area.clip(1e-9))


def place_surface(
    head: HeadModel, rest: Tensor, chosen: Tensor, density: Tensor, cfg: HeadAvatarConfig
) -> MeshBinding:
    """The surface Gaussians on the rest mesh [V, 3]: the detail layer, a coarser base layer under it and
    a row along the open edges."""
    tris = head.triangles
    n_base = int(cfg.base_share * cfg.num_gaussians)
    detail = surface_binding(
        rest, tris, chosen, density, cfg.num_gaussians - n_base, cfg.overlap, cfg.thickness
    )
    # A coarser layer of wider Gaussians just under the skin closes the gaps between the small ones.
    base = surface_binding(rest, tris, chosen, density, n_base, cfg.base_overlap, cfg.base_thickness)
    on_scalp = torch.isin(base.triangle, head.region_triangles("head_and_neck"))
    base.offset = -torch.where(on_scalp, cfg.base_depth_scalp, cfg.base_depth)
    return MeshBinding.concatenate([detail, base, rim_binding(rest, tris, chosen)])


def photo_colours(
    head: HeadModel,
    photo_mesh: Tensor,  # [V, 3] the mesh as in the photo, cm
    surface: MeshBinding,
    crop: np.ndarray,  # [S, S, 3] float32
    camera: Camera,
    coverage: PhotoCoverage,
    cfg: HeadAvatarConfig,
) -> tuple[PhotoSamples, PhotoSamples]:
    """The photo's colours of the surface Gaussians, and of their mirror points (trusted `mirror_weight`
    as much, and only where a mirror point exists)."""
    tris = head.triangles
    corners = photo_mesh.numpy()[tris.numpy()]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    photo_normals = torch.from_numpy(normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12))
    view = (crop, camera, coverage.frags.depth, cfg.depth_tolerance_cm, cfg.grazing_cos)
    own = sample_photo(
        surface_points(photo_mesh, tris, surface.triangle, surface.barycentric).numpy(),
        photo_normals[surface.triangle].numpy(),
        *view,
    )
    m_tri, m_bary, m_found = mirror_points(head, surface.triangle, surface.barycentric)
    mirror = sample_photo(
        surface_points(photo_mesh, tris, m_tri, m_bary).numpy(), photo_normals[m_tri].numpy(), *view
    )
    mirror.confidence *= m_found.numpy() * cfg.mirror_weight
    return own, mirror


@dataclass
class ColourField:
    """The completed colour of every vertex, and the skin colour the photo shows."""

    vertex_rgb: np.ndarray  # [V, 3]
    skin_rgb: np.ndarray  # [3]


def complete_colours(
    head: HeadModel,
    photo_mesh: Tensor,  # [V, 3] the mesh as in the photo, cm
    chosen: Tensor,  # [C] the covered triangles, on which the field lives
    crop: np.ndarray,
    camera: Camera,
    coverage: PhotoCoverage,
    cfg: HeadAvatarConfig,
) -> ColourField:
    """Per-vertex photo colours (the mirror side filling in), hair and skin priors estimated from the photo,
    and the smooth colour field between them."""
    tri_np = head.triangles.numpy()
    v_normals = head.vertex_normals(photo_mesh[None])[0].numpy()
    view = (crop, camera, coverage.frags.depth, cfg.depth_tolerance_cm, cfg.grazing_cos)
    v_obs = sample_photo(photo_mesh.numpy(), v_normals, *view)
    mv = mirror_vertices(head)
    v_mirror_conf = v_obs.confidence[mv] * cfg.mirror_weight
    v_conf = v_obs.confidence + (1 - v_obs.confidence) * v_mirror_conf
    v_rgb = np.where(
        (v_conf > 0)[:, None],
        (
            v_obs.confidence[:, None] * v_obs.rgb
            + ((1 - v_obs.confidence) * v_mirror_conf)[:, None] * v_obs.rgb[mv]
        )
        / np.maximum(v_conf, 1e-9)[:, None],
        0.0,
    )
    prior, skin_rgb = _colour_prior(head, v_obs, crop, coverage.covered)
    field = colour_field(
        photo_mesh.numpy(),
        tri_np[chosen.numpy()],
        v_rgb,
        cfg.field_data_weight * v_conf,
        prior,
        cfg.prior_weight,
        cfg.smoothness,
    )
    return ColourField(field, skin_rgb)


def _colour_prior(
    head: HeadModel, v_obs: PhotoSamples, crop: np.ndarray, covered: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The colour [V, 3] each vertex falls back to far from what the photo saw (hair on the scalp, skin
    elsewhere, white on the eyeballs), and the photo's skin colour [3]."""
    neutral = head.neutral.cpu().numpy()
    hair = np.zeros(head.num_vertices, np.float32)
    hn = head.region_vertices("head_and_neck").numpy()
    hair[hn] = hair_weight(neutral[hn])
    face_v = head.region_vertices("face").numpy()
    skin_rgb = robust_colour(v_obs.rgb[face_v], v_obs.confidence[face_v] > 0.7, FALLBACK_SKIN)
    scalp_seen = (v_obs.confidence > 0.5) & (hair > 0.6)
    hair_rgb = dominant_colour(
        np.concatenate([v_obs.rgb[scalp_seen], pixels_above_head(crop, covered)]), FALLBACK_HAIR
    )
    prior = hair[:, None] * hair_rgb + (1 - hair[:, None]) * skin_rgb
    eyes = np.concatenate([head.region_vertices(n).numpy() for n in ("eyeball_left", "eyeball_right")])
    prior[eyes] = np.asarray(SCLERA_RGB, np.float32) * np.clip(np.mean(skin_rgb) / REFERENCE_SKIN, 0.3, 1.3)
    return prior, skin_rgb


def surface_colours(
    head: HeadModel, surface: MeshBinding, own: PhotoSamples, mirror: PhotoSamples, field: ColourField
) -> Tensor:
    """Colours [Ns, 3] of the surface Gaussians: the photo's where it saw them, then the mirror side's,
    then the colour field."""
    tri_np = head.triangles.numpy()
    field_at = (
        surface.barycentric[:, :, None].numpy() * field.vertex_rgb[tri_np[surface.triangle.numpy()]]
    ).sum(1)
    a = own.confidence[:, None]
    b = ((1 - own.confidence) * mirror.confidence)[:, None]
    colors = a * own.rgb + b * mirror.rgb + (1 - a - b) * field_at
    return torch.from_numpy(np.clip(colors, 0, 1)).float()


def lit_mouth(head: HeadModel, rest: Tensor, skin_rgb: np.ndarray) -> tuple[MeshBinding, Tensor]:
    """The mouth interior on the rest mesh [V, 3], its brightness following the photo's skin."""
    palette = MouthPalette(
        exposure=float(np.clip(float(np.mean(skin_rgb)) / REFERENCE_SKIN, 0.3, 1.6)) ** 0.5
    )
    with torch.no_grad():
        mouth = mouth_interior(head, rest, triangle_frames(rest, head.triangles), palette, TEETH_GAUSSIANS)
    return mouth.binding, mouth.colors


def neck_lining(head: HeadModel, rest: Tensor, cfg: HeadAvatarConfig) -> tuple[MeshBinding, Tensor]:
    """Dark Gaussians under the neck's skin, and their colours [N, 3].

    The neck is an open tube: seen from below, its inside would show the outside's colours (the
    Gaussians are two-sided). A dark lining under the neck's skin is what shows from inside instead;
    from outside it is hidden behind the skin and its base layer.
    """
    tris = head.triangles
    with torch.no_grad():
        # The face region runs down the front of the neck: its part below the chin is lined too.
        hn, face = head.region_triangles("head_and_neck"), head.region_triangles("face")
        neck_tris = torch.cat(
            [hn[rest[tris[hn], 1].mean(1) < cfg.neck_blend_cm[1]], face[rest[tris[face], 1].mean(1) < -10.0]]
        )
        lining = surface_binding(
            rest, tris, neck_tris, torch.ones(len(neck_tris)), len(neck_tris), cfg.base_overlap, cfg.thickness
        )
        lining.offset = torch.full_like(lining.offset, -cfg.lining_depth)
    colors = torch.from_numpy(np.asarray(MOUTH_SOCKET_RGB, np.float32)).expand(len(lining), 3)
    return lining, colors


def refine_colours(avatar: HeadAvatar, crop: np.ndarray, confidence: Tensor, steps: int) -> None:
    """Render at the photo's view and move each seen Gaussian's colour by its pixel's error, `steps` times.

    Overlapping Gaussians average their neighbours' colours; this fixed-point correction restores the
    photo's sharpness where it was seen. `confidence` [Ns] weighs the first Ns (surface) Gaussians.
    """
    if steps <= 0:
        return
    cam = avatar.photo_camera
    vertices = avatar.photo_mesh()
    means, quats, scales = avatar.binding.pose(vertices, avatar.head.triangles)
    posed = Gaussians(means, quats, scales, avatar.opacities, avatar.colors)  # shares the colour tensor
    n = len(confidence)
    row, col = pixel_of(means[:n], cam)
    target = torch.from_numpy(crop)
    w = confidence[:, None].float()
    for _ in range(steps):
        out = rasterize(posed, cam, backend="cpu")
        # Only where the render is opaque: at the silhouette the photo shows background, not the head.
        error = (target - out.rgb) * (out.alpha[..., None] > 0.98)
        avatar.colors[:n] = (avatar.colors[:n] + w * error[row, col]).clamp(0, 1)
        posed.colors = avatar.colors

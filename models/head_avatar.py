"""A full 3D Gaussian head from one portrait (Avatar3D), drivable by any `Motion`.

Gaussians cover the whole fitted ICT head — face and ears, scalp and neck, eyeballs, and the mouth
interior — bound to its triangles with `MeshBinding`, so expressions and head motion deform them.

- Placement: every triangle is cut into m × m similar sub-triangles (m from an area budget that is
  denser on the face and eyes than on the scalp and neck) with one Gaussian at each sub-triangle's
  centroid, shaped like the sub-triangle (its second moment), flat along the normal. Half the
  budget goes by surface area, half by the photo's pixels (about one Gaussian per visible pixel).
  A coarser base layer of wider, thicker Gaussians just under the skin and a row of Gaussians on
  the open edges close every gap from any side; a dark lining inside the open neck is what a view
  from below sees.
- Colour: the portrait is projected onto the fitted mesh posed as in the photo; a z-buffer
  (`rasterize_mesh`) decides what the photo sees, and the view angle weighs it (grazing views give
  little confidence). Unseen or grazing surface is completed by (1) the mirror point of the face
  (ICT is exactly symmetric in x, so each point has a mirror triangle and barycentrics), then (2) a
  colour field on the mesh graph: a screened Laplacian that keeps what the photo saw and diffuses it
  over the rest, pulled weakly towards a hair colour on the scalp and a skin colour elsewhere, both
  estimated from the photo. Smooth diffusion makes the seam between photo and completion invisible.
- Eyes are the ICT eyeballs coloured like the skin (photo where visible); the mouth interior is the
  portrait avatar's teeth, gums, tongue and socket.
- Refinement: a few render-and-correct passes at the photo's view push the colours of the Gaussians
  the photo sees by their pixel's error (the closed-form correction of the portrait avatar).

World frame (the avatar's canonical space): the head model's (cm, y up, face along +z) without the
photo's pose. A motion frame's rotation/translation move the head about `HEAD_PIVOT` from there, and
its expression adds to the portrait's own; the neck's base stays with the body.

This module holds the avatar and its build's outline; the phases are models.head_build, on top of
models.surface_placement (the tiling), models.mesh_symmetry (mirror points) and models.colour_completion
(photo samples and the colour field).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.avatar_state import (
    avatar_arrays,
    avatar_camera,
    avatar_crop_box,
    binding_from_arrays,
    binding_layout,
    check_kind,
    state_meta,
    state_tensors,
)
from models.colour_completion import colour_field
from models.errors import HeadsplatError
from models.head_build import (
    complete_colours,
    lit_mouth,
    neck_lining,
    photo_colours,
    photo_coverage,
    place_surface,
    refine_colours,
    surface_colours,
    surface_density,
    surface_triangles,
)
from models.head_model import HeadModel
from models.latent import NUM_EXPRESSIONS, Identity, Motion
from models.mesh_binding import MeshBinding
from models.mesh_symmetry import mirror_points
from models.photo_view import check_portrait, crop_image, fitted_head, head_crop_box, portrait_camera
from renderers import Camera, Gaussians

# Also importable from here, where they lived before the split.
__all__ = [
    "HeadAvatar",
    "HeadAvatarConfig",
    "build_head_avatar",
    "colour_field",
    "mirror_points",
    "turntable_cameras",
]


@dataclass
class HeadAvatarConfig:
    """How a 3D head avatar is built."""

    num_gaussians: int = 100_000
    """Target number of surface Gaussians (the mouth interior adds about 19k); the per-triangle grid
    makes the actual count land near, not on, this number."""
    overlap: float = 1.2
    """Standard deviation of a detail Gaussian relative to that of its sub-triangle (uniform density)."""
    base_share: float = 0.2
    """Share of the Gaussians in the coarse base layer under the detail layer."""
    base_overlap: float = 3.0
    """Like `overlap`, for the base layer: wide enough that it alone leaves no hole from any side."""
    base_thickness: float = 0.8
    """Like `thickness`, for the base layer: thicker, so grazing views along the surface stay opaque."""
    base_depth: float = 1.0
    """How far under the surface the base layer sits on the face and eyes, in triangle-size units: deep
    enough that it never draws over the detail layer at the photo's view."""
    base_depth_scalp: float = 0.5
    """The same on the scalp and neck, whose big, curved triangles need the base close to the surface
    to stay opaque along their silhouettes."""
    thickness: float = 0.3
    """Extent along the normal relative to the smaller in-plane extent (flat, but not a zero-width sheet
    when seen edge on)."""
    photo_size: int = 512
    """Side of the square crop of the portrait that colours are sampled from, pixels."""
    crop_scale: float = 1.35
    """Crop side relative to the projected head's larger extent."""
    grazing_cos: tuple[float, float] = (0.2, 0.55)
    """Cosines of the view angle between which the photo's confidence ramps from 0 to 1."""
    depth_tolerance_cm: float = 0.35
    """How far behind the photo's z-buffer a point may be and still count as seen."""
    mirror_weight: float = 0.9
    """How much the mirror side's photo colour is trusted where this side was unseen (0..1)."""
    field_data_weight: float = 10.0
    """Pull of the photo's colours in the colour field, per cm² of surface (at full confidence)."""
    prior_weight: float = 0.1
    """Pull of the hair/skin colour prior in the colour field, per cm² of surface."""
    smoothness: float = 1.0
    """Weight of the mesh-graph Laplacian in the colour field; photo colours spread about
    sqrt(smoothness / prior_weight) cm into unseen surface before the prior takes over."""
    lining_depth: float = 2.0
    """How far under the neck's skin its dark inner lining sits, in triangle-size units (below the
    base layer, so that from outside the lining never shows through)."""
    neck_blend_cm: tuple[float, float] = (-13.0, -7.0)
    """Neck heights (y, cm, rest mesh) between which the head's motion fades out towards the body."""
    area_share: float = 0.4
    """Share of the Gaussians spread by surface area; the rest follow the photo's pixels."""
    refinement_steps: int = 2
    """Render-and-correct passes at the photo's view (0 turns refinement off)."""
    refinement_rate: float = 0.8
    """Share of a pixel's error each pass adds to its Gaussian (below 1: neighbours overlap, so full
    steps overshoot)."""


@dataclass
class HeadAvatar:
    """A built 3D head: mesh-bound Gaussians with colours, the identity and how the photo saw it."""

    head: HeadModel
    identity: Tensor  # [1, K]
    rest_expression: Tensor  # [1, 53] the portrait's own expression
    binding: MeshBinding
    colors: Tensor  # [N, 3] RGB in [0, 1]
    opacities: Tensor  # [N] in [0, 1]
    vertex_weights: Tensor  # [V] share of the head's motion each vertex follows (0 at the neck base)
    photo_rotation: Tensor  # [3] radians: the head's pose in the photo
    photo_translation: Tensor  # [3] cm
    photo_camera: Camera  # the crop of the photo the colours came from
    crop_box: tuple[float, float, float, float]  # (x0, y0, x1, y1) of that crop in photo pixels

    # ------------------------------------------------------------------------------------------
    def mesh(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
        """Meshes [B, V, 3] in the avatar's world for expression [B, 53] (added to the rest expression),
        rotation [B, 3] radians and translation [B, 3] cm (relative to the canonical pose)."""
        head = self.head
        shape = head.shape(self.identity, (self.rest_expression + expression).clamp(0, 1))
        moved = head.pose(shape, rotation, translation)
        w = self.vertex_weights[None, :, None]
        return w * moved + (1 - w) * shape

    def gaussians(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Gaussians:
        """The head's Gaussians in world space (cm) for one motion frame: expression [53], rotation [3],
        translation [3]."""
        vertices = self.mesh(expression[None], rotation[None], translation[None])[0]
        return self._on(vertices)

    def gaussians_motion(self, motion: Motion, frame: int) -> Gaussians:
        """The Gaussians of frame `frame` of `motion`."""
        dev = self.colors.device
        return self.gaussians(
            torch.from_numpy(motion.expression[frame]).to(dev),
            torch.from_numpy(motion.rotation[frame]).to(dev),
            torch.from_numpy(motion.translation[frame]).to(dev),
        )

    def canonical_gaussians(self) -> Gaussians:
        """The head with a neutral expression (all blendshapes 0) and no pose, world space, cm."""
        vertices = self.head.shape(self.identity, torch.zeros_like(self.rest_expression))[0]
        return self._on(vertices)

    def photo_mesh(self) -> Tensor:
        """The mesh [V, 3] as it sits in the portrait (its expression and pose, the photo's world)."""
        shape = self.head.shape(self.identity, self.rest_expression)
        return self.head.pose(shape, self.photo_rotation[None], self.photo_translation[None])[0]

    def photo_gaussians(self) -> Gaussians:
        """The Gaussians as the portrait saw them; render them with `photo_camera` to compare."""
        return self._on(self.photo_mesh())

    def _on(self, vertices: Tensor) -> Gaussians:
        means, quats, scales = self.binding.pose(vertices, self.head.triangles)
        return Gaussians(means, quats, scales, self.opacities, self.colors)

    def centre(self) -> Tensor:
        """Where a turntable should aim [3] cm: the middle of the canonical head above the neck."""
        shape = self.head.shape(self.identity, torch.zeros_like(self.rest_expression))[0]
        verts = shape[: self.head.region_vertices("mouth_socket")[0]]  # face + head_and_neck
        verts = verts[verts[:, 1] > self.head.pivot[1] - 6.0]
        return 0.5 * (verts.min(0).values + verts.max(0).values)

    @property
    def num_gaussians(self) -> int:
        return len(self.binding)

    def to(self, device) -> HeadAvatar:
        """The same avatar with its tensors on `device`."""
        # nn.Module.to moves in place: a copy keeps this avatar's head where it is.
        head = (
            self.head
            if self.head.neutral.device == torch.device(device)
            else copy.deepcopy(self.head).to(device)
        )
        return HeadAvatar(
            head=head,
            identity=self.identity.to(device),
            rest_expression=self.rest_expression.to(device),
            binding=self.binding.to(device),
            colors=self.colors.to(device),
            opacities=self.opacities.to(device),
            vertex_weights=self.vertex_weights.to(device),
            photo_rotation=self.photo_rotation.to(device),
            photo_translation=self.photo_translation.to(device),
            photo_camera=self.photo_camera,
            crop_box=self.crop_box,
        )

    # ------------------------------------------------------------------------------------------
    _TENSORS = (
        "identity", "rest_expression", "colors", "opacities", "vertex_weights", "photo_rotation",
        "photo_translation",
    )  # fmt: skip
    KIND = "headsplat.head_avatar"

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Tensors and JSON-ready metadata that `from_state` rebuilds the avatar from."""
        tensors = state_tensors(self, self._TENSORS, self.binding)
        meta = state_meta(
            self.KIND, self.head, "photo_camera", self.photo_camera,
            units="cm", crop_box=[float(v) for v in self.crop_box],
        )  # fmt: skip
        return tensors, meta

    #: What `from_state` accepts, one row per array (see models.avatar_state.avatar_arrays): N the
    #: Gaussians, K the identity coefficients, V the head model's vertices, T its triangles.
    FILE_LAYOUT = (
        *binding_layout("N"),
        ("colors", "float", ("N", 3), "unit"),
        ("opacities", "float", ("N",), "unit"),
        ("vertex_weights", "float", ("V",), "unit"),
        ("identity", "float", (1, "K"), None),
        ("rest_expression", "float", (1, NUM_EXPRESSIONS), "unit"),
        ("photo_rotation", "float", (3,), None),
        ("photo_translation", "float", (3,), None),
    )

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict, head: HeadModel) -> HeadAvatar:
        """Rebuild an avatar from `state()`'s output; anything else (a damaged or crafted file) raises
        HeadsplatError naming the first field that is wrong. Floats become float32, indices int64."""
        check_kind(
            meta, cls.KIND, "not a headsplat 3D head avatar (build one with python -m pipelines.avatar3d)"
        )
        camera = avatar_camera(meta, "photo_camera")
        crop_box = avatar_crop_box(meta)
        arrays, _ = avatar_arrays(tensors, cls.FILE_LAYOUT, head, {})
        return cls(
            head=head, binding=binding_from_arrays(arrays), photo_camera=camera, crop_box=crop_box, **arrays
        )


def build_head_avatar(
    image: np.ndarray,  # [H, W, 3] uint8 RGB portrait
    identity: Identity,  # fitted: coefficients, photo pose, focal_px, image_size
    rest_expression: np.ndarray,  # [53] the portrait's fitted expression
    head: HeadModel,
    config: HeadAvatarConfig | None = None,
) -> HeadAvatar:
    """Build the 3D head of a fitted portrait (see the module docstring for how)."""
    cfg = config or HeadAvatarConfig()
    check_portrait(image, identity)
    if cfg.num_gaussians < 1000:
        raise HeadsplatError(f"num_gaussians must be at least 1000; got {cfg.num_gaussians}")
    fit = fitted_head(identity, rest_expression, head)
    box = head_crop_box(fit, identity, head, cfg.neck_blend_cm[1], cfg.crop_scale)
    camera = portrait_camera(identity, box, cfg.photo_size)
    crop = crop_image(image, box, cfg.photo_size)

    chosen, region_density = surface_triangles(head)
    coverage = photo_coverage(head, fit.posed, chosen, camera)
    density = surface_density(fit.shape, head.triangles, chosen, region_density, coverage, cfg.area_share)
    surface = place_surface(head, fit.shape, chosen, density, cfg)
    own, mirror = photo_colours(head, fit.posed, surface, crop, camera, coverage, cfg)
    field = complete_colours(head, fit.posed, chosen, crop, camera, coverage, cfg)
    mouth, mouth_colors = lit_mouth(head, fit.shape, field.skin_rgb)
    lining, lining_colors = neck_lining(head, fit.shape, cfg)

    binding = MeshBinding.concatenate([surface, lining, mouth])
    avatar = HeadAvatar(
        head=head,
        identity=fit.identity,
        rest_expression=fit.expression,
        binding=binding,
        colors=torch.cat([surface_colours(head, surface, own, mirror, field), lining_colors, mouth_colors]),
        opacities=torch.full((len(binding),), 0.99),
        vertex_weights=fit.neck_weights(cfg.neck_blend_cm),
        photo_rotation=fit.rotation,
        photo_translation=fit.translation,
        photo_camera=camera,
        crop_box=box,
    )
    refine_colours(avatar, crop, cfg.refinement_rate * torch.from_numpy(own.confidence), cfg.refinement_steps)
    return avatar


def turntable_cameras(
    avatar: HeadAvatar,
    n_views: int,
    size: int = 512,
    pitch: float = 0.0,
    yaw: float = 0.0,
    fov_y: float = math.radians(25.0),
) -> list[Camera]:
    """`n_views` cameras on one turn about the head starting at `yaw` (0 = in front, radians), raised by
    `pitch` radians, framing the head and neck (a 35 cm tall view)."""
    from renderers import orbit_cameras

    distance = 17.5 / math.tan(0.5 * fov_y)
    return orbit_cameras(
        n_views,
        distance,
        avatar.centre().cpu(),
        pitch=pitch,
        yaw_start=yaw,
        width=size,
        height=size,
        fov_y=fov_y,
    )

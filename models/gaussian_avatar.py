"""The portrait avatar (Talk): a portrait as Gaussians bound to the fitted ICT mesh.

The portrait avatar puts one Gaussian on every head pixel of a square crop of the photo, bound to the
fitted ICT triangle that pixel sees (barycentric position, rotation in the triangle frame), so moving
the mesh moves the pixels. Around it:

- the person outside the mesh (hair, hats, ears' rims; MediaPipe's selfie matte) is a shell that turns
  with the head, the collar and the rest of the body on the fitted neck stay still in front of it, and a
  backing skin covers what a head turn shows (models.portrait_turns);
- surfaces hidden in the photo (eyelid folds, inner lips, the eyeballs under the lids) get fill
  Gaussians coloured from the nearest visible pixel, slightly behind the visible skin, so blinks and
  open mouths show skin rather than holes;
- the mouth interior is ICT's own teeth, gums, tongue and mouth socket, coloured to the photo's light;
- a static background layer is the crop with the moving region inpainted, seen where the head moves
  away;
- the neck blends from the head's pose to the body's, so the bottom of the neck stays on the shoulders.

Everything is in the head model's world frame (cm, y up, face along +z); the portrait camera looks at
the head from +z (OpenCV camera axes: x right, y down, z forward).

This module holds the avatar and its build's outline; the build's phases are models.portrait_build,
on models.photo_view (the photo's camera and crop), models.mouth_interior and models.avatar_state (what
`state()` holds and `from_state` checks). The full 3D head (Avatar3D) is models.head_avatar.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from models.avatar_state import (
    MAX_AVATAR_GAUSSIANS,
    avatar_arrays,
    avatar_camera,
    avatar_crop_box,
    avatar_damaged,
    binding_from_arrays,
    binding_layout,
    check_kind,
    meta_count,
    meta_flag,
    meta_number,
    state_meta,
    state_tensors,
)
from models.head_model import HeadModel
from models.latent import NUM_EXPRESSIONS, Identity, Motion
from models.mesh_binding import MeshBinding
from models.mouth_interior import MouthInterior, mouth_interior
from models.mouth_rest import check_silent_mouth, silent_expression
from models.photo_view import (
    check_portrait,
    crop_image,
    fitted_head,
    head_crop_box,
    portrait_camera,
    project_points,
)
from models.portrait_build import (
    AUTO_CROP_MAX,
    REGION_ID,
    auto_crop_size,
    bind_mouth_pixels,
    bind_pixels,
    hidden_fill,
    inpainted_background,
    mouth_palette,
    photo_mouth,
    refine_colours,
    skin_colour,
    triangle_labels,
)
from models.portrait_turns import SOLID_ALPHA, backing, body_pixels, hair_shell, shown_pixels, solid_layer
from models.segmentation import person_matte
from models.transforms import euler_to_matrix, matrix_to_quaternion, quaternion_multiply
from renderers import PARALLEL_LOCK, Camera, Gaussians, composite_over, rasterize

# Also importable from here: the avatar's own names, and those that lived here before the split.
__all__ = [
    "AUTO_CROP_MAX",
    "SOLID_ALPHA",
    "MAX_AVATAR_GAUSSIANS",
    "PortraitAvatar",
    "PortraitAvatarConfig",
    "auto_crop_size",
    "avatar_damaged",
    "build_portrait_avatar",
    "crop_image",
    "lip_gaps",
    "project_points",
    "solid_layer",
]


#: Opacity of the pixel and hair Gaussians. Not 1: the renderer (as gsplat) drops a Gaussian that would
#: take a pixel's transmittance below 1e-4, and at 1 (clamped to 0.999) one in front with 0.9 would then
#: leave the pixel at alpha 0.9; at 0.99 a Gaussian is only dropped once the pixel is 99% covered.
PIXEL_OPACITY = 0.99

#: Transmittance at which a pixel of the moving layer is done (renderers.rasterize's `t_stop`).
SOLID_T_STOP = 0.01

#: A triangle gets a backing when some head turn shows it at more than BACKED_SHARE times the pixels the
#: photo gave it, plus BACKED_MIN_PX (at a 512 crop): seen edge-on near the outline, or not at all.
BACKED_SHARE = 1.4
BACKED_MIN_PX = 1

#: How far beyond its rest outline a turning head may draw, as a share of the crop's side.
HEAD_REACH = 0.12


@dataclass
class PortraitAvatarConfig:
    """How a portrait avatar is built."""

    crop_size: int | None = 512
    """Side of the square crop the avatar is drawn in, pixels; None: the crop's own size in the photo,
    between 64 and AUTO_CROP_MAX (frames are pasted back at that size, so more pixels would be wasted)."""
    crop_scale: float = 1.35
    """Crop side relative to the projected head's larger extent (leaves room for hair and motion)."""
    pixel_sigma: float = 0.25
    """Standard deviation of a pixel's Gaussian in pixels (at the fitted pose)."""
    thickness: float = 0.15
    """Depth extent of a pixel's Gaussian relative to its width."""
    neck_blend_cm: tuple[float, float] = (-13.0, -7.0)
    """Neck heights (y, cm, rest mesh) between which the head pose fades out towards the body."""
    colour_refinement_steps: int = 3
    """Render-and-correct passes that sharpen pixel colours so the neutral render matches the photo."""
    teeth_gaussians: int | None = None
    """Gaussians tiling ICT's 32 teeth; None: 12,000 at a 512-pixel crop, scaled with the crop's area
    (about one per pixel of the front teeth)."""


@dataclass
class PortraitAvatar:
    """A built portrait avatar: everything needed to render new frames at `crop_size`."""

    head: HeadModel
    identity: Tensor  # [1, K]
    rest_expression: Tensor  # [1, 53] the portrait's own expression
    rest_rotation: Tensor  # [1, 3] radians, the head's pose in the photo
    rest_translation: Tensor  # [1, 3] cm
    camera: Camera  # looks at the crop, crop_size × crop_size
    crop_box: tuple[float, float, float, float]  # (x0, y0, x1, y1) of the crop in photo pixels
    binding: MeshBinding  # mesh-bound Gaussians (pixels, hidden fill, mouth interior)
    bound_colors: Tensor  # [Nb, 3]
    bound_opacities: Tensor  # [Nb]
    rigid_means: Tensor  # [Nr, 3] rest positions of the pixels that follow the head rigidly
    rigid_quats: Tensor  # [Nr, 4]
    rigid_scales: Tensor  # [Nr, 3]
    rigid_colors: Tensor  # [Nr, 3]
    rigid_weights: Tensor  # [Nr] how much of the head's motion each follows, 0..1
    vertex_weights: (
        Tensor  # [V] how much of the head pose each vertex follows (1 on the head, 0 at the neck base)
    )
    background: np.ndarray  # [S, S, 3] float32 crop with the moving region inpainted
    moving_mask: np.ndarray  # [S, S] float32, 1 where the avatar's Gaussians may draw
    num_mouth: int = 0  # the last num_mouth bound Gaussians are the mouth interior
    lip_gap_cm: float = 0.0  # inner-lip gaps above this mean the lips are parted
    mouth_darkening: Tensor | None = None  # [num_mouth] how much each mouth Gaussian darkens, jaw wide open
    photo_mouth_open: bool = False  # the photo caught the mouth open (see models.mouth_rest)
    silent_mouth: str = "auto"  # how the mouth rests in silence (models.mouth_rest.SILENT_MOUTHS)

    def __post_init__(self) -> None:
        check_silent_mouth(self.silent_mouth)
        if self.mouth_darkening is None:
            self.mouth_darkening = torch.zeros(self.num_mouth, device=self.bound_colors.device)

    @property
    def silent_expression(self) -> Tensor:
        """The expression [1, 53] the face rests in, which motion frames are added to: the photo's own, or
        with its lips closed (`silent_mouth`, see models.mouth_rest)."""
        return silent_expression(self.rest_expression, self.silent_mouth, self.photo_mouth_open)

    def photo_offset(self) -> Tensor:
        """The expression [53] that, added to a frame, gives back the photo's own face (zero unless the
        mouth rests closed where the photo's was open); Talk eases from it into the motion."""
        return (self.rest_expression - self.silent_expression)[0]

    # ------------------------------------------------------------------------------------------
    def head_pose(self, rotation: Tensor, translation: Tensor) -> tuple[Tensor, Tensor]:
        """The moved head's pose in the photo's world for motion frames (rotation [B, 3] radians and
        translation [B, 3] cm, relative to the rest pose): rotation matrices [B, 3, 3] about the head
        pivot and translations [B, 3] cm.

        The pose composes as the face tracker's does: R = R_rest · R_motion, t = t_rest + t_motion. This is
        `compose_pose` as matrices, which keeps gradients and the tensors' device and never rounds through
        Euler angles (tests check the two agree).
        """
        turn = euler_to_matrix(self.rest_rotation) @ euler_to_matrix(rotation)
        return turn, self.rest_translation + translation

    def mesh(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
        """Posed meshes [B, V, 3] for motion frames: expression [B, 53] added to the rest expression,
        rotation [B, 3] and translation [B, 3] relative to the rest pose (see `head_pose`).

        The CPU frames of `gaussians` pose the mesh with a fused numba kernel (models._avatar_kernels);
        this is its torch twin.
        """
        head = self.head
        centred = head.shape(self.identity, (self.silent_expression + expression).clamp(0, 1)) - head.pivot
        turn, shift = self.head_pose(rotation, translation)
        moved = centred @ turn.transpose(-1, -2) + head.pivot + shift[:, None, :]
        still = centred @ euler_to_matrix(self.rest_rotation).transpose(-1, -2) + head.pivot
        # The head's own motion fades out down the neck, so the neck's base stays on the shoulders.
        w = self.vertex_weights[None, :, None]
        return w * moved + (1 - w) * (still + self.rest_translation[:, None, :])

    def rest_mesh(self) -> Tensor:
        """The fitted mesh [V, 3] as it sits in the photo (its own expression, whatever the silent mouth)."""
        zero = torch.zeros(1, 3)
        return self.mesh(self.photo_offset()[None], zero, zero)[0]

    def rigid_transform(self, rotation: Tensor, translation: Tensor) -> tuple[Tensor, Tensor]:
        """World rotation [B, 3, 3] and translation [B, 3] taking the rest head to the moved head."""
        r0 = euler_to_matrix(self.rest_rotation)[0]
        p = self.head.pivot
        t0 = self.rest_translation[0]
        # x_rest = R0 (v - p) + p + t0 and x_moved = R (v - p) + p + t0 + tm with R = R0 Rm (`head_pose`),
        # so x_moved = A x_rest + b with A = R R0^T and b = p + t0 + tm - A (p + t0).
        rot = self.head_pose(rotation, translation)[0] @ r0.T
        shift = p + t0 + translation - (rot @ (p + t0)[:, None])[..., 0]
        return rot, shift

    def gaussians(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Gaussians:
        """The avatar's Gaussians for one frame (expression [53], rotation [3], translation [3]).

        Order: the mesh-bound face, the rigid band, then (only while the lips are parted) the mouth
        interior: behind shut lips it is invisible but would still cost the renderer a pass over every
        mouth pixel. On the CPU the frame is posed by fused numba kernels (`gaussians_torch` is the same
        in torch, used for CUDA and autograd); its opacities and colours are concatenations cached with
        the avatar (remade when the avatar's own change) and shared between frames: do not modify them
        in place. The avatar's geometry is taken as fixed once built.
        """
        cpu = expression.device.type == "cpu" and self.rigid_means.device.type == "cpu"
        if cpu and not (expression.requires_grad or rotation.requires_grad or translation.requires_grad):
            return self._gaussians_cpu(expression, rotation, translation)
        return self.gaussians_torch(expression, rotation, translation)

    def gaussians_torch(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Gaussians:
        """`gaussians` in plain torch (any device, differentiable)."""
        vertices = self.mesh(expression[None], rotation[None], translation[None])[0]
        means, quats, scales = self.binding.pose(vertices, self.head.triangles)
        face = len(self.binding) - self.num_mouth
        gap = self.lip_gap(vertices)
        keep = len(self.binding) if gap > self.lip_gap_cm else face
        rot, shift = self.rigid_transform(rotation[None], translation[None])
        w = self.rigid_weights[:, None]
        moved = self.rigid_means @ rot[0].T + shift[0]
        r_means = (1 - w) * self.rigid_means + w * moved
        turn = matrix_to_quaternion(rot[0])
        r_quats = quaternion_multiply(turn.expand_as(self.rigid_quats), self.rigid_quats)
        r_quats = torch.nn.functional.normalize((1 - w) * self.rigid_quats + w * r_quats, dim=-1)
        ones = torch.full((len(self.rigid_means),), PIXEL_OPACITY, device=means.device)
        return Gaussians.unchecked(
            torch.cat([means[:face], r_means, means[face:keep]]),
            torch.cat([quats[:face], r_quats, quats[face:keep]]),
            torch.cat([scales[:face], self.rigid_scales, scales[face:keep]]),
            torch.cat([self.bound_opacities[:face], ones, self.bound_opacities[face:keep]]),
            torch.cat([self.bound_colors[:face], self.rigid_colors, self._mouth_colors(gap)[: keep - face]]),
        )

    def _mouth_colors(self, gap_cm: float) -> Tensor:
        """The mouth interior's colours [num_mouth, 3] for lips `gap_cm` apart (see MouthInterior.shade)."""
        base = self.bound_colors[len(self.binding) - self.num_mouth :]
        return MouthInterior(self.binding, base, self.mouth_darkening).shade(gap_cm)

    def _cpu_constants(self) -> dict:
        """Per-avatar arrays for `_gaussians_cpu`, made on first use (the avatar is not changed after build)."""
        cache = self.__dict__.get("_cpu_cache")
        if cache is None:
            head = self.head
            face = len(self.binding) - self.num_mouth
            with torch.no_grad():
                id_shape = head.shape(self.identity, torch.zeros(1, NUM_EXPRESSIONS))[0]
            cache = {
                "id_shape": id_shape.numpy().astype(np.float32),
                "basis": np.ascontiguousarray(head.expression_basis.numpy(), np.float32),
                "vertex_w": np.ascontiguousarray(self.vertex_weights.numpy(), np.float32),
                "pivot": head.pivot.numpy().astype(np.float32),
                "rest_rot": euler_to_matrix(self.rest_rotation)[0].numpy().astype(np.float32),
                "rest_t": self.rest_translation[0].numpy().astype(np.float32),
                "triangles": np.ascontiguousarray(head.triangles.numpy()),
                "rigid_means": np.ascontiguousarray(self.rigid_means.numpy(), np.float32),
                "rigid_quats": np.ascontiguousarray(self.rigid_quats.numpy(), np.float32),
                "rigid_weights": np.ascontiguousarray(self.rigid_weights.numpy(), np.float32),
                "rigid_scales": np.ascontiguousarray(self.rigid_scales.numpy(), np.float32),
                # The bound set in two parts, each posed into its own rows of the frame.
                "face_binding": self.binding.subset(torch.arange(face)),
                "mouth_binding": self.binding.subset(torch.arange(face, len(self.binding))),
            }
            self.__dict__["_cpu_cache"] = cache
        # Opacities and colours in frame order, for both layouts (mouth drawn or not) at once; remade only
        # when they change (the avatar's build refines its colours between renders).
        sources = (self.bound_opacities, self.bound_colors, self.rigid_colors)
        versions = tuple(t._version for t in sources)
        known = cache.get("sources", ())
        if (
            len(known) != 3
            or any(a is not b for a, b in zip(known, sources))
            or cache["versions"] != versions
        ):
            face = len(self.binding) - self.num_mouth
            ones = torch.full((len(self.rigid_means),), PIXEL_OPACITY)
            cache["opacities"] = torch.cat([self.bound_opacities[:face], ones, self.bound_opacities[face:]])
            cache["colors"] = torch.cat(
                [self.bound_colors[:face], self.rigid_colors, self.bound_colors[face:]]
            )
            cache["sources"], cache["versions"] = sources, versions
        return cache

    def _gaussians_cpu(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Gaussians:
        from models._avatar_kernels import posed_mesh, rigid_band

        c = self._cpu_constants()
        weights = (self.silent_expression[0] + expression.float()).clamp(0, 1).numpy()
        turn = euler_to_matrix(rotation.float()[None])[0].numpy()
        vertices = np.empty_like(c["id_shape"])
        with PARALLEL_LOCK:
            posed_mesh(
                c["id_shape"], c["basis"], weights, c["vertex_w"], turn, c["rest_rot"], c["pivot"],
                c["rest_t"], translation.float().numpy(), vertices,
            )  # fmt: skip
        gap = self.lip_gap(torch.from_numpy(vertices))
        lips_apart = gap > self.lip_gap_cm
        face, nr = len(self.binding) - self.num_mouth, len(c["rigid_means"])
        n = face + nr + (self.num_mouth if lips_apart else 0)
        means = np.empty((n, 3), np.float32)
        quats = np.empty((n, 4), np.float32)
        scales = np.empty((n, 3), np.float32)
        c["face_binding"].pose_into(vertices, c["triangles"], means[:face], quats[:face], scales[:face])
        if lips_apart:
            rows = slice(face + nr, n)
            c["mouth_binding"].pose_into(vertices, c["triangles"], means[rows], quats[rows], scales[rows])
        rot, shift = self.rigid_transform(rotation.float()[None], translation.float()[None])
        with PARALLEL_LOCK:
            rigid_band(
                c["rigid_means"], c["rigid_quats"], c["rigid_weights"], rot[0].numpy(), shift[0].numpy(),
                matrix_to_quaternion(rot[0]).numpy(), means[face : face + nr], quats[face : face + nr],
            )  # fmt: skip
        scales[face : face + nr] = c["rigid_scales"]
        colors = c["colors"][:n]
        if lips_apart and self.num_mouth:  # the open mouth's depths darken with the jaw
            colors = torch.cat([colors[: face + nr], self._mouth_colors(gap)])
        return Gaussians.unchecked(
            torch.from_numpy(means), torch.from_numpy(quats), torch.from_numpy(scales),
            c["opacities"][:n], colors,
        )  # fmt: skip

    def lip_gap(self, vertices: Tensor) -> float:
        """The widest inner-lip gap (cm, see `lip_gaps`) of a posed mesh [V, 3]; above `lip_gap_cm` the
        lips are parted and the mouth is drawn."""
        return float(lip_gaps(vertices, self.head).max())

    def render(self, expression, rotation, translation, backend: str = "auto") -> np.ndarray:
        """One crop frame [S, S, 3] float32 in [0, 1] for one motion frame."""
        rgb, alpha = self.render_layers(expression, rotation, translation, backend=backend)
        return np.clip(composite_over(rgb, alpha, self.background), 0.0, 1.0)

    def render_layers(
        self, expression, rotation, translation, backend: str = "auto"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The moving layer alone: premultiplied colour [S, S, 3] and alpha [S, S] (float32 numpy), to be
        composited over `background` (see `render`, and `renderers.FramePaster` for videos).

        The head is a solid surface: where the Gaussians cover a pixel to SOLID_ALPHA or more, their colour
        is normalised and the pixel made opaque (as EWA surface splatting normalises by its splats' summed
        weights), so pixels a sub-pixel shift leaves 95-99% covered never let the background through;
        below it (the outline's anti-aliased edge, real holes) the alpha is only scaled by 1/SOLID_ALPHA.
        For the same reason a pixel covered 99% (SOLID_T_STOP) takes no more Gaussians: the backing and
        whatever else lies behind it would change its colour by 1% at most, and cost most of the time.
        """
        out = rasterize(
            self.gaussians(expression, rotation, translation),
            self.camera,
            backend=backend,
            t_stop=SOLID_T_STOP,
        )
        return solid_layer(out.rgb.cpu().numpy(), out.alpha.cpu().numpy())

    def render_motion(self, motion: Motion, frame: int, backend: str = "auto", layers: bool = False):
        """Crop frame [S, S, 3] for frame `frame` of `motion` (with `layers`: `render_layers`' pair)."""
        args = (
            torch.from_numpy(motion.expression[frame]),
            torch.from_numpy(motion.rotation[frame]),
            torch.from_numpy(motion.translation[frame]),
        )
        return self.render_layers(*args, backend=backend) if layers else self.render(*args, backend=backend)

    @property
    def num_gaussians(self) -> int:
        return len(self.binding) + len(self.rigid_means)

    def to(self, device) -> PortraitAvatar:
        """The same avatar with its tensors on `device` (the background image stays in numpy)."""
        tensors, meta = self.state()
        moved = {k: v.to(device) for k, v in tensors.items() if k not in ("background", "moving_mask")}
        moved["background"], moved["moving_mask"] = tensors["background"], tensors["moving_mask"]
        avatar = PortraitAvatar.from_state(moved, meta, self.head.to(device))
        avatar.silent_mouth = self.silent_mouth
        return avatar

    # ------------------------------------------------------------------------------------------
    _TENSORS = (
        "identity", "rest_expression", "rest_rotation", "rest_translation", "bound_colors", "bound_opacities",
        "rigid_means", "rigid_quats", "rigid_scales", "rigid_colors", "rigid_weights", "vertex_weights",
        "mouth_darkening",
    )  # fmt: skip
    KIND = "headsplat.portrait_avatar"

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Tensors and JSON-ready metadata that `from_state` rebuilds the avatar from."""
        tensors = state_tensors(self, self._TENSORS, self.binding)
        tensors["background"] = torch.from_numpy(np.ascontiguousarray(self.background))
        tensors["moving_mask"] = torch.from_numpy(np.ascontiguousarray(self.moving_mask))
        meta = state_meta(
            self.KIND, self.head, "camera", self.camera,
            crop_box=[float(v) for v in self.crop_box], num_mouth=self.num_mouth, lip_gap_cm=self.lip_gap_cm,
            photo_mouth_open=self.photo_mouth_open,
        )  # fmt: skip
        return tensors, meta

    #: What `from_state` accepts, one row per array (see models.avatar_state.avatar_arrays): Nb mesh-bound
    #: and Nr rigid Gaussians, K identity coefficients, V the head model's vertices, T its triangles, H and
    #: W the camera's height and width.
    FILE_LAYOUT = (
        *binding_layout("Nb"),
        ("bound_colors", "float", ("Nb", 3), "unit"),
        ("bound_opacities", "float", ("Nb",), "unit"),
        ("rigid_means", "float", ("Nr", 3), None),
        ("rigid_quats", "float", ("Nr", 4), "quat"),
        ("rigid_scales", "float", ("Nr", 3), "scale"),
        ("rigid_colors", "float", ("Nr", 3), "unit"),
        ("rigid_weights", "float", ("Nr",), "unit"),
        ("vertex_weights", "float", ("V",), "unit"),
        ("mouth_darkening", "float", ("Nm",), "unit"),
        ("identity", "float", (1, "K"), None),
        ("rest_expression", "float", (1, NUM_EXPRESSIONS), "unit"),
        ("rest_rotation", "float", (1, 3), None),
        ("rest_translation", "float", (1, 3), None),
        ("background", "float", ("H", "W", 3), "unit"),
        ("moving_mask", "float", ("H", "W"), "unit"),
    )

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict, head: HeadModel) -> PortraitAvatar:
        """Rebuild an avatar from `state()`'s output; anything else (a damaged or crafted file) raises
        HeadsplatError naming the first field that is wrong. Floats become float32, indices int64."""
        check_kind(meta, cls.KIND, "not a headsplat portrait avatar")
        camera = avatar_camera(meta, "camera")
        crop_box = avatar_crop_box(meta)
        num_mouth = meta_count(meta, "num_mouth")
        lip_gap_cm = meta_number(meta, "lip_gap_cm")
        photo_mouth_open = meta_flag(meta, "photo_mouth_open")
        sizes = {"H": (camera.height, "camera.height"), "W": (camera.width, "camera.width")}
        arrays, sizes = avatar_arrays(tensors, cls.FILE_LAYOUT, head, sizes)
        if num_mouth > sizes["Nb"]:
            raise avatar_damaged(f"num_mouth is {num_mouth}, more than the {sizes['Nb']} bound Gaussians")
        if sizes["Nm"] != num_mouth:
            raise avatar_damaged(f"mouth_darkening has {sizes['Nm']} values for {num_mouth} mouth Gaussians")
        return cls(
            head=head,
            camera=camera,
            crop_box=crop_box,
            num_mouth=num_mouth,
            lip_gap_cm=lip_gap_cm,
            photo_mouth_open=photo_mouth_open,
            binding=binding_from_arrays(arrays),
            background=arrays.pop("background").cpu().numpy(),
            moving_mask=arrays.pop("moving_mask").cpu().numpy(),
            **arrays,
        )


def lip_gaps(vertices: Tensor, head: HeadModel) -> Tensor:
    """Distances [3] (cm) between the inner-lip landmark pairs (Multi-PIE 61/67, 62/66, 63/65) of a mesh [V, 3]."""
    marks = vertices[head.landmarks68]
    return (marks[[61, 62, 63]] - marks[[67, 66, 65]]).norm(dim=-1)


def build_portrait_avatar(
    image: np.ndarray,  # [H, W, 3] uint8 RGB photo
    identity: Identity,  # fitted: coefficients, rest pose, focal_px, image_size
    rest_expression: np.ndarray,  # [53] the portrait's fitted expression
    head: HeadModel,
    config: PortraitAvatarConfig | None = None,
) -> PortraitAvatar:
    """Build the portrait avatar of a fitted photo (see the module docstring for what goes in)."""
    cfg = config or PortraitAvatarConfig()
    check_portrait(image, identity)
    fit = fitted_head(identity, rest_expression, head)
    box = head_crop_box(fit, identity, head, cfg.neck_blend_cm[1], cfg.crop_scale)
    size = cfg.crop_size if cfg.crop_size is not None else auto_crop_size(box)
    camera = portrait_camera(identity, box, size)
    crop = crop_image(image, box, size)

    labels = triangle_labels(head)
    pixels = bind_pixels(head, fit.posed, camera, crop, labels, cfg.pixel_sigma, cfg.thickness)
    matte = person_matte(crop)
    band = hair_shell(
        crop, matte, pixels.hit, pixels.frags.depth, camera, fit, cfg.neck_blend_cm, cfg.pixel_sigma
    )
    skin = skin_colour(pixels)
    seen = photo_mouth(head, fit.posed, camera, crop, skin)
    inside = bind_mouth_pixels(head, fit.posed, camera, pixels, seen, cfg.pixel_sigma, cfg.thickness)
    fill, fill_colors = hidden_fill(head, fit.posed, pixels, labels, seal_lips=seen.open)
    # Behind the pixels, a coarser skin over the face and scalp surfaces a head turn shows at more pixels
    # than the photo gave them: it keeps the head opaque where a turn pulls pixels apart, and covers what
    # the photo did not see.
    outer = np.isin(labels, [REGION_ID["face"], REGION_ID["head_and_neck"]])
    rest_rot = euler_to_matrix(fit.rotation[None])[0]
    shown = shown_pixels(head, fit.posed, rest_rot, head.pivot + fit.translation, camera)
    seen_px = np.bincount(pixels.frags.triangle[pixels.hit], minlength=len(labels))
    sparse = shown > BACKED_SHARE * seen_px + BACKED_MIN_PX * (size / 512) ** 2
    # And the neck where it twists: its skin pulls away from the still collar in front of it.
    weights = fit.neck_weights(cfg.neck_blend_cm)
    sparse |= (weights[head.triangles].min(1).values < 1.0).numpy() & (shown > 0)
    back, back_colors = backing(
        head, fit.posed, pixels.frames[1], camera, np.nonzero(outer & sparse)[0], shown, pixels.means, pixels.colors,
        ~pixels.in_mouth,
    )  # fmt: skip
    fill = MeshBinding.concatenate([fill, back])
    fill_colors = torch.cat([fill_colors, back_colors])
    teeth = cfg.teeth_gaussians or max(1500, round(12000 * (size / 512) ** 2))
    mouth = mouth_interior(head, fit.posed, pixels.frames, mouth_palette(crop, skin, seen), teeth)
    background, moving_mask = inpainted_background(crop, pixels.hit | band.region)
    # Frames are pasted back inside this mask: it must reach as far as a turned head and its hair go
    # (about 4 cm at 20 degrees of yaw); outside what moves, the background there is the photo itself.
    reach = 2 * int(HEAD_REACH * size) + 1
    moving_mask = cv2.dilate(moving_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))

    # The photo's own pixels between parted lips join the mouth interior, drawn only while the lips are
    # apart: closed lips never show a slit of teeth.
    # The collar and whatever else of the body the fitted neck covers stays still, in front of the neck.
    rows, cols = np.nonzero(pixels.hit)
    on_neck = torch.from_numpy(labels[pixels.binding.triangle.numpy()] == REGION_ID["head_and_neck"])
    body = body_pixels(
        pixels.means, pixels.colors, pixels.on_face, on_neck, matte, rows, cols, camera, fit,
        cfg.neck_blend_cm[1], cfg.pixel_sigma,
    )  # fmt: skip
    outside = torch.ones(len(pixels.colors), dtype=torch.bool)
    outside[inside] = False
    outside[body.rows] = False
    # The still pixels join the rigid set with weight 0, between the hair's own pixels and its backing
    # (the pixels' own colours, the first front + still, are refined; the backing's are not).
    front, still = band.front, len(body.rows)

    def rigid(hair: Tensor, body_part: Tensor) -> Tensor:
        return torch.cat([hair[:front], body_part, hair[front:]])

    face_px = pixels.binding.subset(outside)
    binding = MeshBinding.concatenate([face_px, fill, pixels.binding.subset(inside), mouth.binding])
    avatar = PortraitAvatar(
        head=head,
        identity=fit.identity,
        rest_expression=fit.expression,
        rest_rotation=fit.rotation[None],
        rest_translation=fit.translation[None],
        camera=camera,
        crop_box=box,
        binding=binding,
        bound_colors=torch.cat(
            [pixels.colors[outside], fill_colors, pixels.colors[inside], mouth.colors]
        ).float(),
        bound_opacities=torch.full((len(binding),), PIXEL_OPACITY),
        rigid_means=rigid(band.means, body.means),
        rigid_quats=rigid(band.quats, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(still, 4)),
        rigid_scales=rigid(band.scales, body.scales),
        rigid_colors=rigid(band.colors, body.colors),
        rigid_weights=rigid(band.weights, torch.zeros(still)),
        vertex_weights=fit.neck_weights(cfg.neck_blend_cm),
        background=background,
        moving_mask=moving_mask,
        num_mouth=len(inside) + len(mouth),
        # ICT's inner-lip landmarks sit ~0.1 cm apart on a closed mouth; the interior is drawn whenever
        # the lips part further (for a portrait with parted lips, at rest too).
        lip_gap_cm=0.2,
        mouth_darkening=torch.cat([torch.zeros(len(inside)), mouth.darkening]),
        photo_mouth_open=seen.open,
        silent_mouth="photo",  # the colours are refined against the photo's own face
    )
    start = len(face_px) + len(fill)
    refined = torch.cat([torch.arange(len(face_px)), torch.arange(start, start + len(inside))])
    refine_colours(avatar, crop, refined, torch.arange(front + still), cfg.colour_refinement_steps)
    avatar.silent_mouth = "auto"
    return avatar

"""Gaussian avatars: a portrait (Talk) or a whole head (Avatar3D) as Gaussians bound to the ICT mesh.

The portrait avatar puts one Gaussian on every head pixel of a square crop of the photo, bound to the
fitted ICT triangle that pixel sees (barycentric position, rotation in the triangle frame), so moving
the mesh moves the pixels. Around it:

- pixels near the head that the mesh does not cover (hair, ears' rims, the collar) follow the head
  rigidly with a weight that falls off with distance, so nothing tears at the silhouette;
- surfaces hidden in the photo (eyelid folds, inner lips, the eyeballs under the lids) get fill
  Gaussians coloured from the nearest visible pixel, slightly behind the visible skin, so blinks and
  open mouths show skin rather than holes;
- the mouth interior is ICT's own teeth, gums, tongue and mouth socket, coloured to the photo's light;
- a static background layer is the crop with the moving region inpainted, seen where the head moves
  away;
- the neck blends from the head's pose to the body's, so the bottom of the neck stays on the shoulders.

Everything is in the head model's world frame (cm, y up, face along +z); the portrait camera looks at
the head from +z (OpenCV camera axes: x right, y down, z forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from models.errors import HeadsplatError
from models.head_model import HeadModel
from models.latent import NUM_EXPRESSIONS, Identity, Motion
from models.mesh_binding import MeshBinding, triangle_frames
from models.transforms import euler_to_matrix, matrix_to_quaternion, quaternion_multiply
from renderers import Camera, Gaussians, rasterize
from renderers.compositing import composite_over
from renderers.mesh_raster import rasterize_mesh

#: Colours of the mouth interior under neutral light (sRGB in [0, 1]); scaled per channel by the photo's
#: skin colour relative to REFERENCE_SKIN_RGB, so a dim or warm portrait gets dim or warm teeth.
TEETH_RGB = (0.74, 0.66, 0.52)
GUMS_TONGUE_RGB = (0.62, 0.27, 0.28)
MOUTH_SOCKET_RGB = (0.16, 0.05, 0.05)
#: Skin brightness (mean of RGB) that the colours above were chosen for, and that skin's colour.
REFERENCE_SKIN = 0.6
REFERENCE_SKIN_RGB = (0.72, 0.58, 0.50)


@dataclass
class PortraitAvatarConfig:
    """How a portrait avatar is built."""

    crop_size: int | None = 512
    """Side of the square crop the avatar is drawn in, pixels; None: the crop's own size in the photo,
    between 64 and AUTO_CROP_MAX (frames are pasted back at that size, so more pixels would be wasted)."""
    crop_scale: float = 1.35
    """Crop side relative to the projected head's larger extent (leaves room for hair and motion)."""
    margin: float = 0.05
    """Width of the band around the head silhouette that follows the head, as a share of the crop."""
    pixel_sigma: float = 0.25
    """Standard deviation of a pixel's Gaussian in pixels (at the fitted pose)."""
    thickness: float = 0.15
    """Depth extent of a pixel's Gaussian relative to its width."""
    neck_blend_cm: tuple[float, float] = (-13.0, -7.0)
    """Neck heights (y, cm, rest mesh) between which the head pose fades out towards the body."""
    colour_refinement_steps: int = 3
    """Render-and-correct passes that sharpen pixel colours so the neutral render matches the photo."""


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

    # ------------------------------------------------------------------------------------------
    def mesh(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
        """Posed meshes [B, V, 3] for motion frames: expression [B, 53] added to the rest expression,
        rotation [B, 3] and translation [B, 3] relative to the rest pose.

        The pose composes as the face tracker's does (models.fitting.compose_pose): rotation
        R = R_rest · R_motion about the head pivot, translation t = t_rest + t_motion in world cm.
        """
        head = self.head
        shape = head.shape(self.identity, (self.rest_expression + expression).clamp(0, 1))
        batch = shape.shape[0]
        turned = head.pose(shape, rotation, torch.zeros_like(translation))
        # The head's own motion fades out down the neck, so the neck's base stays on the shoulders.
        w = self.vertex_weights[None, :, None]
        blended = w * turned + (1 - w) * shape
        posed = head.pose(
            blended, self.rest_rotation.expand(batch, 3), self.rest_translation.expand(batch, 3)
        )
        return posed + w * translation[:, None, :]

    def rest_mesh(self) -> Tensor:
        """The fitted mesh [V, 3] as it sits in the photo."""
        zero = torch.zeros(1, 3)
        return self.mesh(torch.zeros(1, NUM_EXPRESSIONS), zero, zero)[0]

    def rigid_transform(self, rotation: Tensor, translation: Tensor) -> tuple[Tensor, Tensor]:
        """World rotation [B, 3, 3] and translation [B, 3] taking the rest head to the moved head."""
        r0 = euler_to_matrix(self.rest_rotation)[0]
        rm = euler_to_matrix(rotation)
        p = self.head.pivot
        t0 = self.rest_translation[0]
        # x_rest = R0 (v - p) + p + t0 and x_moved = R0 Rm (v - p) + p + t0 + tm, so
        # x_moved = A x_rest + b with A = R0 Rm R0^T and b = p + t0 + tm - A (p + t0).
        rot = r0 @ rm @ r0.T
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
        keep = len(self.binding) if self.lips_apart(vertices) else face
        rot, shift = self.rigid_transform(rotation[None], translation[None])
        w = self.rigid_weights[:, None]
        moved = self.rigid_means @ rot[0].T + shift[0]
        r_means = (1 - w) * self.rigid_means + w * moved
        turn = matrix_to_quaternion(rot[0])
        r_quats = quaternion_multiply(turn.expand_as(self.rigid_quats), self.rigid_quats)
        r_quats = torch.nn.functional.normalize((1 - w) * self.rigid_quats + w * r_quats, dim=-1)
        ones = torch.ones(len(self.rigid_means), device=means.device)
        return Gaussians.unchecked(
            torch.cat([means[:face], r_means, means[face:keep]]),
            torch.cat([quats[:face], r_quats, quats[face:keep]]),
            torch.cat([scales[:face], self.rigid_scales, scales[face:keep]]),
            torch.cat([self.bound_opacities[:face], ones, self.bound_opacities[face:keep]]),
            torch.cat([self.bound_colors[:face], self.rigid_colors, self.bound_colors[face:keep]]),
        )

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
            ones = torch.ones(len(self.rigid_means))
            cache["opacities"] = torch.cat([self.bound_opacities[:face], ones, self.bound_opacities[face:]])
            cache["colors"] = torch.cat(
                [self.bound_colors[:face], self.rigid_colors, self.bound_colors[face:]]
            )
            cache["sources"], cache["versions"] = sources, versions
        return cache

    def _gaussians_cpu(self, expression: Tensor, rotation: Tensor, translation: Tensor) -> Gaussians:
        from models._avatar_kernels import posed_mesh, rigid_band
        from renderers._cpu import PARALLEL_LOCK

        c = self._cpu_constants()
        weights = (self.rest_expression[0] + expression.float()).clamp(0, 1).numpy()
        turn = euler_to_matrix(rotation.float()[None])[0].numpy()
        vertices = np.empty_like(c["id_shape"])
        with PARALLEL_LOCK:
            posed_mesh(
                c["id_shape"], c["basis"], weights, c["vertex_w"], turn, c["rest_rot"], c["pivot"],
                c["rest_t"], translation.float().numpy(), vertices,
            )  # fmt: skip
        lips_apart = self.lips_apart(torch.from_numpy(vertices))
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
        return Gaussians.unchecked(
            torch.from_numpy(means), torch.from_numpy(quats), torch.from_numpy(scales),
            c["opacities"][:n], c["colors"][:n],
        )  # fmt: skip

    def lips_apart(self, vertices: Tensor) -> bool:
        """Whether the lips of a posed mesh [V, 3] are parted (see `lip_gaps`)."""
        return bool(lip_gaps(vertices, self.head).max() > self.lip_gap_cm)

    def render(self, expression, rotation, translation, backend: str = "auto") -> np.ndarray:
        """One crop frame [S, S, 3] float32 in [0, 1] for one motion frame."""
        rgb, alpha = self.render_layers(expression, rotation, translation, backend=backend)
        return np.clip(composite_over(rgb, alpha, self.background), 0.0, 1.0)

    def render_layers(
        self, expression, rotation, translation, backend: str = "auto"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The moving layer alone: premultiplied colour [S, S, 3] and alpha [S, S] (float32 numpy), to be
        composited over `background` (see `render`, and `renderers.FramePaster` for videos)."""
        out = rasterize(self.gaussians(expression, rotation, translation), self.camera, backend=backend)
        return out.rgb.cpu().numpy(), out.alpha.cpu().numpy()

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
        return PortraitAvatar.from_state(moved, meta, self.head.to(device))

    # ------------------------------------------------------------------------------------------
    _TENSORS = (
        "identity", "rest_expression", "rest_rotation", "rest_translation", "bound_colors", "bound_opacities",
        "rigid_means", "rigid_quats", "rigid_scales", "rigid_colors", "rigid_weights", "vertex_weights",
    )  # fmt: skip
    _BINDING = ("triangle", "barycentric", "offset", "rotation", "scale")

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Tensors and JSON-ready metadata that `from_state` rebuilds the avatar from."""
        tensors = {name: getattr(self, name).contiguous() for name in self._TENSORS}
        tensors.update({f"binding.{f}": getattr(self.binding, f).contiguous() for f in self._BINDING})
        tensors["background"] = torch.from_numpy(np.ascontiguousarray(self.background))
        tensors["moving_mask"] = torch.from_numpy(np.ascontiguousarray(self.moving_mask))
        cam = self.camera
        meta = {
            "kind": "headsplat.portrait_avatar",
            "version": 1,
            "num_identity": self.head.num_identity,
            "crop_box": [float(v) for v in self.crop_box],
            "num_mouth": self.num_mouth,
            "lip_gap_cm": self.lip_gap_cm,
            "camera": {
                "fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy, "width": cam.width, "height": cam.height,
                "world_to_camera": cam.world_to_camera.tolist(), "near": cam.near, "far": cam.far,
            },
        }  # fmt: skip
        return tensors, meta

    #: What `from_state` accepts, one row per array: name, element kind ("float", or "index" into the
    #: head mesh's triangles), shape (numbers, or names of sizes that must agree wherever they appear: Nb
    #: mesh-bound and Nr rigid Gaussians, K identity coefficients, V the head model's vertices, H and W the
    #: camera's height and width) and range ("unit": [0, 1]; "scale": >= 0; "quat": no all-zero row;
    #: None: any sane number; see `avatar_arrays`).
    FILE_LAYOUT = (
        ("binding.triangle", "index", ("Nb",), "T"),
        ("binding.barycentric", "float", ("Nb", 3), "unit"),
        ("binding.offset", "float", ("Nb",), None),
        ("binding.rotation", "float", ("Nb", 4), "quat"),
        ("binding.scale", "float", ("Nb", 3), "scale"),
        ("bound_colors", "float", ("Nb", 3), "unit"),
        ("bound_opacities", "float", ("Nb",), "unit"),
        ("rigid_means", "float", ("Nr", 3), None),
        ("rigid_quats", "float", ("Nr", 4), "quat"),
        ("rigid_scales", "float", ("Nr", 3), "scale"),
        ("rigid_colors", "float", ("Nr", 3), "unit"),
        ("rigid_weights", "float", ("Nr",), "unit"),
        ("vertex_weights", "float", ("V",), "unit"),
        ("identity", "float", (1, "K"), None),
        ("rest_expression", "float", (1, NUM_EXPRESSIONS), "unit"),
        ("rest_rotation", "float", (1, 3), None),
        ("rest_translation", "float", (1, 3), None),
        ("background", "float", ("H", "W", 3), "unit"),
        ("moving_mask", "float", ("H", "W"), "unit"),
    )
    KIND = "headsplat.portrait_avatar"

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict, head: HeadModel) -> PortraitAvatar:
        """Rebuild an avatar from `state()`'s output; anything else (a damaged or crafted file) raises
        HeadsplatError naming the first field that is wrong. Floats become float32, indices int64."""
        if not isinstance(meta, dict) or meta.get("kind") != cls.KIND:
            raise HeadsplatError("not a headsplat portrait avatar")
        camera = avatar_camera(meta, "camera")
        crop_box = avatar_crop_box(meta)
        num_mouth = meta.get("num_mouth", 0)
        if not _is_int(num_mouth) or num_mouth < 0:
            raise avatar_damaged(f"num_mouth must be a whole number >= 0, not {_short(num_mouth)}")
        lip_gap_cm = meta.get("lip_gap_cm", 0.0)
        if not _is_number(lip_gap_cm):
            raise avatar_damaged(f"lip_gap_cm must be a finite number, not {_short(lip_gap_cm)}")
        sizes = {"H": (camera.height, "camera.height"), "W": (camera.width, "camera.width")}
        arrays, sizes = avatar_arrays(tensors, cls.FILE_LAYOUT, head, sizes)
        if num_mouth > sizes["Nb"]:
            raise avatar_damaged(f"num_mouth is {num_mouth}, more than the {sizes['Nb']} bound Gaussians")
        return cls(
            head=head,
            camera=camera,
            crop_box=crop_box,
            num_mouth=num_mouth,
            lip_gap_cm=float(lip_gap_cm),
            binding=MeshBinding(*(arrays.pop(f"binding.{f}") for f in cls._BINDING)),
            background=arrays.pop("background").cpu().numpy(),
            moving_mask=arrays.pop("moving_mask").cpu().numpy(),
            **arrays,
        )


# ----------------------------------------------------------------------------------------------
# Avatar files: what `from_state` checks (shared with models.head_avatar)

#: Most Gaussians an avatar may hold (rows of any per-Gaussian array in its file).
MAX_AVATAR_GAUSSIANS = 20_000_000
#: Largest camera side (and background side) an avatar may have, pixels.
MAX_AVATAR_IMAGE_SIDE = 4096
#: Largest magnitude of any stored number without a tighter range (cm, radians, triangle sizes, photo
#: pixels): far beyond any real head or photo, small enough that posing and projecting stay finite.
MAX_AVATAR_VALUE = 1e5
#: Value ranges of `FILE_LAYOUT` rows: (low, high, how the message says it). "unit" allows float noise.
_AVATAR_RANGES = {
    None: (-MAX_AVATAR_VALUE, MAX_AVATAR_VALUE, f"[-{MAX_AVATAR_VALUE:g}, {MAX_AVATAR_VALUE:g}]"),
    "unit": (-1e-4, 1.0 + 1e-4, "[0, 1]"),
    "scale": (0.0, MAX_AVATAR_VALUE, f"[0, {MAX_AVATAR_VALUE:g}]"),
}


def avatar_damaged(what: str) -> HeadsplatError:
    """The error for a damaged avatar file, `what` naming the field (one line)."""
    return HeadsplatError(f"avatar file is damaged: {' '.join(what.split())}; rebuild it")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value, limit: float = MAX_AVATAR_VALUE) -> bool:
    """A finite JSON number (not a bool, not a string) of magnitude at most `limit`."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(abs(value) <= limit)


def avatar_camera(meta: dict, key: str) -> Camera:
    """The camera stored under `key` in an avatar's metadata, every field checked."""
    cam = meta.get(key)
    if cam is None:
        raise avatar_damaged(f"its metadata has no {key}")
    if not isinstance(cam, dict):
        raise avatar_damaged(f"{key} must be a JSON object, not {_short(cam)}")
    values = {}
    for name in ("fx", "fy", "cx", "cy", "near", "far"):
        if name not in cam and name in ("near", "far"):
            continue  # Camera's defaults
        value = cam.get(name)
        if not _is_number(value, 1e9) or (name in ("fx", "fy", "near", "far") and value <= 0):
            sign = "positive " if name in ("fx", "fy", "near", "far") else ""
            raise avatar_damaged(f"{key}.{name} must be a {sign}finite number, not {_short(value)}")
        values[name] = float(value)
    for name in ("width", "height"):
        value = cam.get(name)
        if not _is_int(value) or not 1 <= value <= MAX_AVATAR_IMAGE_SIDE:
            raise avatar_damaged(
                f"{key}.{name} must be a whole number of pixels from 1 to {MAX_AVATAR_IMAGE_SIDE}, not "
                f"{_short(value)}"
            )
        values[name] = value
    matrix = cam.get("world_to_camera")
    if not (
        isinstance(matrix, list)
        and len(matrix) == 4
        and all(isinstance(row, list) and len(row) == 4 and all(map(_is_number, row)) for row in matrix)
    ):
        raise avatar_damaged(f"{key}.world_to_camera must be 4 rows of 4 finite numbers")
    try:
        return Camera(world_to_camera=torch.tensor(matrix, dtype=torch.float32), **values)
    except ValueError as err:
        raise avatar_damaged(f"{key} is unusable ({err})") from err


def avatar_crop_box(meta: dict) -> tuple[float, float, float, float]:
    """The metadata's crop box (x0, y0, x1, y1) in photo pixels, checked."""
    box = meta.get("crop_box")
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        raise avatar_damaged(
            f"crop_box must be 4 finite numbers (x0, y0, x1, y1) within ±{MAX_AVATAR_VALUE:g} pixels, "
            f"not {_short(box)}"
        )
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise avatar_damaged(f"crop_box {_short(box)} is empty (it needs x1 > x0 and y1 > y0)")
    return x0, y0, x1, y1


def avatar_arrays(
    tensors: dict[str, Tensor], layout: tuple, head: HeadModel, sizes: dict[str, tuple[int, str]]
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Every array of `layout` (see PortraitAvatar.FILE_LAYOUT) from `tensors`, checked and converted:
    floats to float32, indices to int64. `sizes` holds the sizes already known, each with what it comes
    from; returns the arrays by name and every size. Raises HeadsplatError on the first problem."""
    sizes = {
        "V": (head.num_vertices, "the head model's vertices"),
        "T": (len(head.triangles), f"the head mesh's {len(head.triangles)} triangles"),
        **sizes,
    }
    out = {}
    for name, kind, shape, bounds in layout:
        value = tensors.get(name)
        if value is None:
            raise avatar_damaged(f"it lacks {name}")
        if not isinstance(value, Tensor):
            raise avatar_damaged(f"{name} is not an array")
        # The element type first, before any conversion: an integer array is no colour, a float no index.
        dtype = str(value.dtype).removeprefix("torch.")
        if kind == "float" and not value.is_floating_point():
            raise avatar_damaged(f"{name} must hold floating-point numbers, not {dtype}")
        if kind == "index" and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
            raise avatar_damaged(f"{name} must hold integer indices, not {dtype}")
        got = tuple(value.shape)
        for dim, size in zip(shape, got) if len(got) == len(shape) else ():
            if isinstance(dim, str) and dim not in sizes:  # the first array with this size sets it
                if size > MAX_AVATAR_GAUSSIANS:
                    raise avatar_damaged(f"{name} has {size} rows, more than {MAX_AVATAR_GAUSSIANS}")
                sizes[dim] = (size, name)
        want = "[" + ", ".join(str(d if isinstance(d, int) else sizes.get(d, (d,))[0]) for d in shape) + "]"
        if len(got) != len(shape):
            raise avatar_damaged(f"{name} has shape {list(got)}, expected {want}")
        for dim, size in zip(shape, got):
            if size != (dim if isinstance(dim, int) else sizes[dim][0]):
                source = "" if isinstance(dim, int) else f" to match {sizes[dim][1]}"
                raise avatar_damaged(f"{name} has shape {list(got)}, expected {want}{source}")
        if kind == "index":
            value = value.to(torch.int64)
            count, source = sizes[bounds]
            if value.numel() and (int(value.min()) < 0 or int(value.max()) >= count):
                raise avatar_damaged(f"{name} has indices outside {source}")
        else:
            value = value.to(torch.float32)
            if not bool(torch.isfinite(value).all()):
                raise avatar_damaged(f"{name} has NaN or infinite values")
            lo, hi, said = _AVATAR_RANGES.get(bounds, _AVATAR_RANGES[None])
            if value.numel() and (float(value.min()) < lo or float(value.max()) > hi):
                raise avatar_damaged(f"{name} has values outside {said}")
            if bounds == "quat" and bool((value.norm(dim=-1) < 1e-6).any()):
                raise avatar_damaged(f"{name} has all-zero rotations")
        out[name] = value
    if "K" in sizes and sizes["K"][0] > head.num_identity:
        raise avatar_damaged(
            f"identity has {sizes['K'][0]} coefficients, more than the head model's {head.num_identity}"
        )
    return out, {k: v[0] for k, v in sizes.items()}


# ----------------------------------------------------------------------------------------------
# Building
def lip_gaps(vertices: Tensor, head: HeadModel) -> Tensor:
    """Distances [3] (cm) between the inner-lip landmark pairs (Multi-PIE 61/67, 62/66, 63/65) of a mesh [V, 3]."""
    marks = vertices[head.landmarks68]
    return (marks[[61, 62, 63]] - marks[[67, 66, 65]]).norm(dim=-1)


def portrait_camera(identity: Identity, crop_box: tuple[float, float, float, float], size: int) -> Camera:
    """The camera of a square crop (x0, y0, x1, y1) of the portrait, resampled to size × size pixels.

    The photo's camera sits at the world origin looking along -z (the head model faces +z), with the
    principal point at the photo's centre and focal length `identity.focal_px`.
    """
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


#: The largest render size `PortraitAvatarConfig(crop_size=None)` picks.
AUTO_CROP_MAX = 512


def auto_crop_size(box: tuple[float, float, float, float]) -> int:
    """Render size for a crop box (x0, y0, x1, y1): its side in photo pixels, kept within [64, AUTO_CROP_MAX]."""
    return int(np.clip(round(float(box[2] - box[0])), 64, AUTO_CROP_MAX))


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


def crop_image(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The box of an RGB uint8 photo resampled to size × size float32 in [0, 1] (edges replicated)."""
    x0, y0, x1, y1 = box
    s = size / (x1 - x0)
    affine = np.array([[s, 0, -x0 * s + 0.5 * s - 0.5], [0, s, -y0 * s + 0.5 * s - 0.5]], np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(image, affine, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    return crop.astype(np.float32) / 255.0


def _camera_rotation_quat(camera: Camera) -> Tensor:
    """The wxyz rotation taking camera axes to world axes (a Gaussian facing the camera)."""
    return matrix_to_quaternion(camera.world_to_camera[:3, :3].T)


def check_portrait(image: np.ndarray, identity: Identity) -> None:
    """A HeadsplatError unless `image` is RGB uint8 [H, W, 3] and the size `identity` was fitted on."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise HeadsplatError("the portrait must be an RGB uint8 image")
    if tuple(identity.image_size) != (image.shape[1], image.shape[0]):
        raise HeadsplatError(
            f"the identity was fitted on a {identity.image_size[0]}x{identity.image_size[1]} image, "
            f"not this {image.shape[1]}x{image.shape[0]} one"
        )


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
    ident = torch.from_numpy(identity.coefficients)[None]
    rest_expr = torch.from_numpy(np.asarray(rest_expression, np.float32).reshape(1, NUM_EXPRESSIONS))
    rest_rot = torch.from_numpy(identity.rotation)[None]
    rest_trans = torch.from_numpy(identity.translation)[None]
    with torch.no_grad():
        rest_shape = head.shape(ident, rest_expr)
        rest_mesh = head.pose(rest_shape, rest_rot, rest_trans)[0]  # [V, 3] world, as in the photo
        full_camera = portrait_camera(identity, (0, 0, image.shape[1], image.shape[0]), image.shape[1])
        head_verts = torch.cat([head.region_vertices("face"), head.region_vertices("head_and_neck")])
        # The crop is sized on the head, not the neck: the neck's lower ring would push the face up.
        above_neck = head_verts[rest_shape[0, head_verts, 1] > cfg.neck_blend_cm[1]]
        head_px = project_points(rest_mesh[above_neck], full_camera).numpy()
    if np.any(head_px[:, 2] <= 0):
        raise HeadsplatError("the fitted head is behind the camera; the fit failed")
    box = crop_box_for_head(head_px[:, :2], identity.image_size, cfg.crop_scale)
    size = cfg.crop_size if cfg.crop_size is not None else auto_crop_size(box)
    camera = portrait_camera(identity, box, size)
    crop = crop_image(image, box, size)

    with torch.no_grad():
        points = project_points(rest_mesh, camera)
        frames = triangle_frames(rest_mesh, head.triangles)
    frags = rasterize_mesh(points.numpy(), head.triangles.numpy(), size, size)
    hit = frags.triangle >= 0
    if hit.sum() < 0.02 * size * size:
        raise HeadsplatError("the fitted head covers almost none of the crop; the fit failed")
    tri_region = _triangle_labels(head)
    hit_label = np.where(hit, tri_region[np.maximum(frags.triangle, 0)], -1)
    # Pixels whose nearest surface is the back of the head or inner geometry seen through a gap are
    # still bound to it: at the fitted pose they are what that pixel shows.
    ys, xs = np.nonzero(hit)
    tri = torch.from_numpy(frags.triangle[ys, xs].astype(np.int64))
    bary = torch.from_numpy(frags.barycentric[ys, xs])
    depth = frags.depth[ys, xs]
    footprint = torch.from_numpy(depth / camera.fx)  # cm per pixel at each pixel's depth
    sigma = cfg.pixel_sigma * footprint
    scales = torch.stack([sigma, sigma, sigma * cfg.thickness], dim=-1)
    facing = _camera_rotation_quat(camera).expand(len(tri), 4)
    pixel_binding = MeshBinding.from_world(
        rest_mesh, head.triangles, tri, bary, torch.zeros(len(tri)), facing.contiguous(), scales, frames
    )
    pixel_colors = torch.from_numpy(crop[ys, xs])

    # ---- the band around the silhouette follows the head rigidly, fading out
    dist_out, nearest = ndimage.distance_transform_edt(~hit, return_indices=True)
    band = cfg.margin * size
    weight_img = np.clip(1.0 - dist_out / band, 0.0, 1.0).astype(np.float32)
    ring = (~hit) & (weight_img > 0)
    ry, rx = np.nonzero(ring)
    ring_depth = frags.depth[nearest[0][ry, rx], nearest[1][ry, rx]]
    ring_points = _unproject(rx + 0.5, ry + 0.5, ring_depth, camera)
    ring_sigma = torch.from_numpy(cfg.pixel_sigma * ring_depth / camera.fx)
    rigid_scales = torch.stack([ring_sigma, ring_sigma, ring_sigma * cfg.thickness], -1).float()
    rigid_weights = torch.from_numpy(weight_img[ry, rx]) ** 1.5  # ease out: the far band barely moves

    # ---- hidden surfaces of the face and eyes, and the mouth interior
    pixel_means = _surface_points(rest_mesh, head.triangles, tri, bary)
    fill_binding, fill_colors = _hidden_fill(
        head, rest_mesh, frames, frags, tri_region, pixel_means, pixel_colors, hit
    )
    face_pixels = torch.from_numpy(hit_label[ys, xs] == _REGION_ID["face"])
    skin_rgb = pixel_colors[face_pixels].mean(0) if face_pixels.any() else torch.tensor(REFERENCE_SKIN_RGB)
    mouth_binding, mouth_colors = mouth_interior(
        head, rest_mesh, frames, skin_rgb / torch.tensor(REFERENCE_SKIN_RGB)
    )

    binding = MeshBinding.concatenate([pixel_binding, fill_binding, mouth_binding])
    colors = torch.cat([pixel_colors, fill_colors, mouth_colors]).float()
    opacities = torch.full((len(binding),), 0.99)

    # ---- background: the crop with everything that may move inpainted
    moving = (hit | ring).astype(np.uint8)
    grow = max(3, int(0.02 * size))
    moving_grown = cv2.dilate(moving, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    inpainted = (
        cv2.inpaint((crop * 255).astype(np.uint8), moving_grown, 5, cv2.INPAINT_TELEA).astype(np.float32)
        / 255.0
    )
    # Only what the Gaussians cover needs inpainting; just outside, the photo itself is the truth.
    background = np.where(moving[..., None] > 0, inpainted, crop)
    neck_low, neck_high = cfg.neck_blend_cm
    vy = rest_shape[0, :, 1]
    vertex_weights = ((vy - neck_low) / (neck_high - neck_low)).clamp(0, 1)

    avatar = PortraitAvatar(
        head=head,
        identity=ident,
        rest_expression=rest_expr,
        rest_rotation=rest_rot,
        rest_translation=rest_trans,
        camera=camera,
        crop_box=box,
        binding=binding,
        bound_colors=colors,
        bound_opacities=opacities,
        rigid_means=ring_points,
        rigid_quats=_camera_rotation_quat(camera).expand(len(ring_points), 4).contiguous(),
        rigid_scales=rigid_scales,
        rigid_colors=torch.from_numpy(crop[ry, rx]).float(),
        rigid_weights=rigid_weights.float(),
        vertex_weights=vertex_weights,
        background=background,
        moving_mask=moving_grown.astype(np.float32),
        num_mouth=len(mouth_binding),
        # ICT's inner-lip landmarks sit ~0.1 cm apart on a closed mouth; a portrait with an open mouth
        # keeps its interior drawn at rest.
        lip_gap_cm=min(float(lip_gaps(rest_mesh, head).max()), 0.15) + 0.05,
    )
    _refine_colours(avatar, crop, n_pixels=len(ys), steps=cfg.colour_refinement_steps)
    return avatar


_REGION_ID = {"face": 0, "head_and_neck": 1, "eyes": 2, "mouth": 3, "other": 4}


def _triangle_labels(head: HeadModel) -> np.ndarray:
    """Coarse part label of every triangle (see _REGION_ID)."""
    labels = np.full(len(head.triangles), _REGION_ID["other"], np.int8)
    for name, label in (
        ("face", "face"),
        ("head_and_neck", "head_and_neck"),
        ("eyeball_left", "eyes"),
        ("eyeball_right", "eyes"),
        ("teeth", "mouth"),
        ("gums_and_tongue", "mouth"),
        ("mouth_socket", "mouth"),
    ):
        labels[head.region_triangles(name).numpy()] = _REGION_ID[label]
    return labels


def _unproject(x: np.ndarray, y: np.ndarray, depth: np.ndarray, camera: Camera) -> Tensor:
    """Pixel coordinates and camera depths → world points [N, 3]."""
    cam = np.stack([(x - camera.cx) / camera.fx * depth, (y - camera.cy) / camera.fy * depth, depth], -1)
    m = camera.world_to_camera.numpy().astype(np.float64)
    world = (cam - m[:3, 3]) @ m[:3, :3]  # R^T (x - t), written row-wise
    return torch.from_numpy(world).float()


def _surface_points(mesh: Tensor, triangles: Tensor, tri: Tensor, bary: Tensor) -> Tensor:
    """Points [N, 3] at barycentric coordinates [N, 3] on triangles [N] of a mesh [V, 3]."""
    return (bary[:, :, None] * mesh[triangles[tri]]).sum(1)


def _hidden_fill(head, rest_mesh, frames, frags, tri_region, pixel_means, pixel_colors, hit):
    """One Gaussian per face/eye triangle that no pixel sees, a little behind the surface, coloured
    by the nearest visible pixel."""
    seen = np.zeros(len(head.triangles), bool)
    seen[np.unique(frags.triangle[hit])] = True
    candidates = np.nonzero(~seen & np.isin(tri_region, [_REGION_ID["face"], _REGION_ID["eyes"]]))[0]
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
    frame, size = frames
    _, idx = cKDTree(pixel_means.numpy()).query(centroids.numpy())
    colors = pixel_colors[torch.from_numpy(idx)]
    k = size[tri]
    bary = torch.full((len(tri), 3), 1.0 / 3.0)
    scales = torch.stack([0.6 * k, 0.6 * k, 0.1 * k], -1)
    binding = MeshBinding.from_world(
        rest_mesh, head.triangles, tri, bary, -0.3 * k, matrix_to_quaternion(frame[tri]), scales, frames
    )
    return binding, colors.float()


def mouth_interior(head, rest_mesh, frames, light: float | Tensor):
    """Gaussians on ICT's teeth, gums/tongue and mouth socket, one per triangle, coloured per part.

    `light` is the photo's light relative to neutral: a number, or per-channel [3] (its colour cast, so
    teeth in a warm photo are warm too). Deeper parts are darker (less light reaches the back of the mouth).
    """
    frame, size = frames
    tri = torch.cat([head.region_triangles(n) for n in ("teeth", "gums_and_tongue", "mouth_socket")])
    colours = torch.cat(
        [
            torch.tensor(rgb).expand(len(head.region_triangles(n)), 3)
            for n, rgb in (
                ("teeth", TEETH_RGB),
                ("gums_and_tongue", GUMS_TONGUE_RGB),
                ("mouth_socket", MOUTH_SOCKET_RGB),
            )
        ]
    )
    # Teeth and gums take the face's light and colour cast (ivory teeth look blue-grey next to warm skin
    # otherwise).
    gain = torch.as_tensor(light, dtype=torch.float32).clamp(0.3, 1.6)
    # Ambient occlusion by depth behind the front teeth, in the head's own frame (the face looks along +z).
    depth_z = head.neutral[head.triangles[tri]].mean(dim=1)[:, 2]
    front = head.neutral[head.region_vertices("teeth"), 2].max()
    shade = (1.0 - 0.6 * (front - depth_z) / 3.0).clamp(0.25, 1.0)
    colours = (colours * gain * shade[:, None]).clamp(0, 1)
    k = size[tri]
    binding = MeshBinding.from_world(
        rest_mesh,
        head.triangles,
        tri,
        torch.full((len(tri), 3), 1.0 / 3.0),
        torch.zeros(len(tri)),
        matrix_to_quaternion(frame[tri]),
        torch.stack([0.7 * k, 0.7 * k, 0.15 * k], -1),
        frames,
    )
    return binding, colours.float()


def _refine_colours(avatar: PortraitAvatar, crop: np.ndarray, n_pixels: int, steps: int) -> None:
    """Render at rest, compare with the photo, push each pixel Gaussian's colour by its pixel's error.

    Overlapping Gaussians blur the image slightly; a few of these fixed-point steps undo most of it.
    """
    if steps <= 0:
        return
    zero3, zero_expr = torch.zeros(3), torch.zeros(NUM_EXPRESSIONS)
    rest = avatar.gaussians(zero_expr, zero3, zero3)
    pix_y, pix_x = _pixel_of(rest.means[:n_pixels], avatar.camera)
    ring_y, ring_x = _pixel_of(avatar.rigid_means, avatar.camera)
    for _ in range(steps):
        out = rasterize(avatar.gaussians(zero_expr, zero3, zero3), avatar.camera, backend="cpu")
        rendered = composite_over(out.rgb.numpy(), out.alpha.numpy(), avatar.background)
        error = torch.from_numpy(crop - rendered)
        avatar.bound_colors[:n_pixels] = (avatar.bound_colors[:n_pixels] + error[pix_y, pix_x]).clamp(0, 1)
        avatar.rigid_colors[:] = (avatar.rigid_colors + error[ring_y, ring_x]).clamp(0, 1)


def _pixel_of(points: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
    """Row and column [N] of the pixel each world point [N, 3] projects into."""
    px = project_points(points, camera)
    col = px[:, 0].floor().long().clamp(0, camera.width - 1)
    row = px[:, 1].floor().long().clamp(0, camera.height - 1)
    return row, col

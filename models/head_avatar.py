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
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve
from scipy.spatial import cKDTree
from torch import Tensor

from models.errors import HeadsplatError
from models.gaussian_avatar import (
    MOUTH_SOCKET_RGB,
    REFERENCE_SKIN,
    check_portrait,
    crop_box_for_head,
    crop_image,
    mouth_interior,
    portrait_camera,
    project_points,
)
from models.head_model import HeadModel
from models.latent import NUM_EXPRESSIONS, Identity, Motion
from models.mesh_binding import MeshBinding, triangle_frames
from renderers import Camera, Gaussians, rasterize
from renderers.mesh_raster import rasterize_mesh

#: Parts covered by surface Gaussians and their relative density (Gaussians per cm² of rest surface).
SURFACE_DENSITY = {"face": 1.0, "head_and_neck": 0.3, "eyeball_left": 0.7, "eyeball_right": 0.7}
#: Parts drawn but coloured as in the portrait avatar (one Gaussian per triangle).
MOUTH_PARTS = ("teeth", "gums_and_tongue", "mouth_socket")
#: Largest subdivision of one triangle (m × m Gaussians).
MAX_SUBDIVISION = 8
#: Hair and skin colours used when the photo shows too little of either.
FALLBACK_HAIR = (0.22, 0.17, 0.13)
#: The white of the eye where the photo does not show it (scaled by the photo's skin brightness).
SCLERA_RGB = (0.8, 0.76, 0.72)


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
    _BINDING = ("triangle", "barycentric", "offset", "rotation", "scale")
    KIND = "headsplat.head_avatar"

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Tensors and JSON-ready metadata that `from_state` rebuilds the avatar from."""
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in self._TENSORS}
        tensors.update(
            {f"binding.{f}": getattr(self.binding, f).detach().cpu().contiguous() for f in self._BINDING}
        )
        cam = self.photo_camera
        meta = {
            "kind": self.KIND,
            "version": 1,
            "num_identity": self.head.num_identity,
            "units": "cm",
            "crop_box": [float(v) for v in self.crop_box],
            "photo_camera": {
                "fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy, "width": cam.width, "height": cam.height,
                "world_to_camera": cam.world_to_camera.tolist(), "near": cam.near, "far": cam.far,
            },
        }  # fmt: skip
        return tensors, meta

    #: What `from_state` accepts, one row per array (as PortraitAvatar.FILE_LAYOUT: name, element kind,
    #: shape with N the Gaussians, K the identity coefficients and V the head model's vertices, range).
    FILE_LAYOUT = (
        ("binding.triangle", "index", ("N",), "T"),
        ("binding.barycentric", "float", ("N", 3), "unit"),
        ("binding.offset", "float", ("N",), None),
        ("binding.rotation", "float", ("N", 4), "quat"),
        ("binding.scale", "float", ("N", 3), "scale"),
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
        from models.gaussian_avatar import avatar_arrays, avatar_camera, avatar_crop_box

        if not isinstance(meta, dict) or meta.get("kind") != cls.KIND:
            raise HeadsplatError(
                "not a headsplat 3D head avatar (build one with python -m pipelines.avatar3d)"
            )
        camera = avatar_camera(meta, "photo_camera")
        crop_box = avatar_crop_box(meta)
        arrays, _ = avatar_arrays(tensors, cls.FILE_LAYOUT, head, {})
        return cls(
            head=head,
            binding=MeshBinding(*(arrays.pop(f"binding.{f}") for f in cls._BINDING)),
            photo_camera=camera,
            crop_box=crop_box,
            **arrays,
        )


# ----------------------------------------------------------------------------------------------
# Placement
def _subdivision_pattern(m: int) -> np.ndarray:
    """Barycentrics [m², 3] of the centroids of the m × m similar sub-triangles of a triangle."""
    points = []
    for i in range(m):
        for j in range(m - i):
            points.append(((i + 1 / 3) / m, (j + 1 / 3) / m))  # upright sub-triangles
            if i + j <= m - 2:
                points.append(((i + 2 / 3) / m, (j + 2 / 3) / m))  # the inverted ones between them
    ab = np.array(points)
    return np.column_stack([1 - ab.sum(1), ab[:, 0], ab[:, 1]])


def _allocate(areas: np.ndarray, density: np.ndarray, target: int) -> np.ndarray:
    """Subdivision m [T] per triangle so that Σ m² is close to `target` with m² ∝ density · area."""
    want = density * areas
    if target <= len(areas):
        return np.ones(len(areas), np.int64)
    lo, hi = 0.0, 1.0
    while (np.clip(np.rint(np.sqrt(hi * want)), 1, MAX_SUBDIVISION) ** 2).sum() < target and hi < 1e12:
        hi *= 2.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        count = (np.clip(np.rint(np.sqrt(mid * want)), 1, MAX_SUBDIVISION) ** 2).sum()
        lo, hi = (mid, hi) if count < target else (lo, mid)
    return np.clip(np.rint(np.sqrt(hi * want)), 1, MAX_SUBDIVISION).astype(np.int64)


def surface_binding(
    vertices: Tensor,  # [V, 3] rest mesh, cm
    triangles: Tensor,  # [T, 3]
    chosen: Tensor,  # [C] triangles to cover
    density: Tensor,  # [C] relative density per cm²
    num_gaussians: int,
    overlap: float = 2.5,
    thickness: float = 0.3,
) -> MeshBinding:
    """About `num_gaussians` Gaussians tiling the chosen triangles, one per sub-triangle of an m × m grid,
    each shaped like its sub-triangle (covariance of a uniform triangle, times `overlap`²)."""
    frames, size = triangle_frames(vertices, triangles[chosen])
    corners = vertices[triangles[chosen]]  # [C, 3, 3]
    # Corners in the triangle's own 2D frame, in triangle-size units (MeshBinding's units).
    local = ((corners - corners[:, :1]) @ frames[:, :, :2]) / size[:, None, None]  # [C, 3, 2]
    centred = local - local.mean(1, keepdim=True)
    # A uniform triangle's covariance is Σ d_i d_iᵀ / 12 over its corners' offsets from the centroid.
    cov = centred.transpose(1, 2) @ centred / 12.0  # [C, 2, 2]
    eigval, eigvec = torch.linalg.eigh(cov.double())
    eigval, eigvec = eigval.clamp_min(1e-12).float(), eigvec.float()
    angle = torch.atan2(eigvec[:, 1, 1], eigvec[:, 0, 1])  # direction of the major axis
    half = 0.5 * angle
    turn = torch.stack([half.cos(), torch.zeros_like(half), torch.zeros_like(half), half.sin()], -1)
    minor, major = eigval[:, 0].sqrt(), eigval[:, 1].sqrt()

    areas = (0.5 * size**2).numpy()
    m = _allocate(areas, density.numpy().astype(np.float64), num_gaussians)
    tri_idx, bary, sub = [], [], []
    for k in np.unique(m):
        rows = np.nonzero(m == k)[0]
        pattern = _subdivision_pattern(int(k))
        tri_idx.append(np.repeat(rows, len(pattern)))
        bary.append(np.tile(pattern, (len(rows), 1)))
        sub.append(np.full(len(rows) * len(pattern), k))
    rows = torch.from_numpy(np.concatenate(tri_idx))
    per = torch.from_numpy(np.concatenate(sub)).float()
    s_major = overlap * major[rows] / per
    s_minor = overlap * minor[rows] / per
    scale = torch.stack([s_major, s_minor, thickness * s_minor], -1)
    return MeshBinding(
        chosen[rows],
        torch.from_numpy(np.concatenate(bary)).float(),
        torch.zeros(len(rows)),
        turn[rows].contiguous(),
        scale,
    )


def rim_binding(
    vertices: Tensor,  # [V, 3] rest mesh, cm
    triangles: Tensor,  # [T, 3]
    chosen: Tensor,  # [C] the covered triangles
    per_edge: int = 3,
    width: float = 0.5,
) -> MeshBinding:
    """Gaussians along the open edges of the covered surface (the neck's base, the eye and mouth
    openings): the tiling's Gaussians sit inside their triangles, so without these an open edge seen
    from the side would fade out before the mesh ends. `width` is the in-plane sigma relative to the
    spacing along the edge."""
    tri = triangles[chosen].numpy()
    local = np.array([[0, 1], [1, 2], [2, 0]])
    edges = np.sort(tri[:, local], axis=2).reshape(-1, 2)  # [3C, 2]
    _, inverse, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    open_edge = np.nonzero(counts[inverse.ravel()] == 1)[0]
    owner, which = open_edge // 3, open_edge % 3
    frac = (np.arange(per_edge) + 0.5) / per_edge
    bary = np.zeros((len(owner), per_edge, 3), np.float32)
    rows = np.arange(len(owner))[:, None]
    bary[rows, :, local[which, 0][:, None]] = 1.0 - frac
    bary[rows, :, local[which, 1][:, None]] = frac
    owner_t = torch.from_numpy(np.repeat(chosen.numpy()[owner], per_edge))
    frames, size = triangle_frames(vertices, triangles[owner_t])
    a = vertices[triangles[owner_t, torch.from_numpy(np.repeat(local[which, 0], per_edge))]]
    b = vertices[triangles[owner_t, torch.from_numpy(np.repeat(local[which, 1], per_edge))]]
    sigma = width * (a - b).norm(dim=-1) / per_edge / size  # triangle-size units
    identity_rot = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(owner_t), 4).contiguous()
    return MeshBinding(
        owner_t,
        torch.from_numpy(bary.reshape(-1, 3)),
        torch.zeros(len(owner_t)),
        identity_rot,
        torch.stack([sigma, sigma, 0.3 * sigma], -1),
    )


# ----------------------------------------------------------------------------------------------
# Symmetry
def mirror_vertices(head: HeadModel) -> np.ndarray:
    """Index [V] of each vertex's mirror image (x → −x) on the neutral ICT mesh (exactly symmetric)."""
    neutral = head.neutral.cpu().numpy()
    dist, idx = cKDTree(neutral).query(neutral * np.array([-1.0, 1.0, 1.0], np.float32))
    assert np.percentile(dist, 99) < 1e-3, "the head model is expected to be symmetric in x"
    return idx


def mirror_points(head: HeadModel, triangle: Tensor, barycentric: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The mirror triangle [N], barycentrics [N, 3] of points on `triangle` [N], and whether one exists [N]."""
    tris = head.triangles.cpu().numpy()
    mv = mirror_vertices(head)
    nv = np.int64(len(mv))

    def key(t: np.ndarray) -> np.ndarray:
        s = np.sort(t, axis=1)
        return (s[:, 0] * nv + s[:, 1]) * nv + s[:, 2]

    all_keys = key(tris)
    order = np.argsort(all_keys)
    mirrored = mv[tris[triangle.cpu().numpy()]]  # [N, 3] mirror of each corner
    pos = np.clip(np.searchsorted(all_keys[order], key(mirrored)), 0, len(order) - 1)
    found = all_keys[order][pos] == key(mirrored)
    mirror_tri = order[pos]
    # Corner j of the mirror triangle is the mirror of corner k of ours: carry the weight across.
    match = tris[mirror_tri][:, :, None] == mirrored[:, None, :]  # [N, 3 (theirs), 3 (ours)]
    bary = np.einsum("njk,nk->nj", match.astype(np.float32), barycentric.cpu().numpy())
    found &= match.sum((1, 2)) == 3
    # Quads are split along their 0-2 diagonal, which a mirrored quad may run the other way: there the
    # mirror point lies on one of the nearby triangles, found by its barycentrics on the neutral mesh.
    missing = np.nonzero(~found)[0]
    if len(missing):
        neutral = head.neutral.cpu().numpy().astype(np.float64)
        corners = neutral[tris[triangle.cpu().numpy()[missing]]]
        point = (barycentric.cpu().numpy()[missing, :, None] * corners).sum(1) * np.array([-1.0, 1.0, 1.0])
        centroids = neutral[tris].mean(1)
        _, near = cKDTree(centroids).query(point, k=8)  # [M, 8]
        cand = neutral[tris[near]]  # [M, 8, 3, 3]
        e1, e2 = cand[:, :, 1] - cand[:, :, 0], cand[:, :, 2] - cand[:, :, 0]
        d = point[:, None] - cand[:, :, 0]
        g11, g12, g22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
        r1, r2 = (d * e1).sum(-1), (d * e2).sum(-1)
        det = np.maximum(g11 * g22 - g12 * g12, 1e-18)
        u, v = (g22 * r1 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det
        cand_bary = np.stack([1 - u - v, u, v], -1)  # [M, 8, 3]
        dist = np.linalg.norm(d - u[..., None] * e1 - v[..., None] * e2, axis=-1)
        # Prefer a triangle that contains the point, then the one nearest to its plane.
        score = np.minimum(cand_bary.min(-1), 0.0) * 10.0 - dist
        best = score.argmax(1)
        rows = np.arange(len(missing))
        chosen_bary = np.clip(cand_bary[rows, best], 0.0, None)
        mirror_tri[missing] = near[rows, best]
        bary[missing] = chosen_bary / chosen_bary.sum(1, keepdims=True).clip(1e-12)
        found[missing] = (cand_bary[rows, best].min(1) > -0.05) & (dist[rows, best] < 0.05)
    return torch.from_numpy(mirror_tri), torch.from_numpy(bary.astype(np.float32)), torch.from_numpy(found)


# ----------------------------------------------------------------------------------------------
# Colour
@dataclass
class PhotoSamples:
    """Colours the photo gives points on the mesh, and how much to trust them."""

    rgb: np.ndarray  # [N, 3] in [0, 1]
    confidence: np.ndarray  # [N] 0 (unseen) .. 1 (seen head on)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def sample_photo(
    points: np.ndarray,  # [N, 3] world points on the photo-posed mesh, cm
    normals: np.ndarray,  # [N, 3] their outward unit normals
    crop: np.ndarray,  # [S, S, 3] float32 in [0, 1]
    camera: Camera,
    zbuffer: np.ndarray,  # [S, S] depth of the nearest surface, cm (inf where none)
    cfg: HeadAvatarConfig,
) -> PhotoSamples:
    """Photo colours of points where the z-buffer says the photo sees them, weighted by view angle."""
    px = project_points(torch.from_numpy(points).float(), camera).numpy()
    x, y, z = px[:, 0], px[:, 1], px[:, 2]
    size = crop.shape[0]
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size) & (z > 0)
    col = np.clip(x.astype(np.int64), 0, size - 1)
    row = np.clip(y.astype(np.int64), 0, size - 1)
    seen = inside & (z <= zbuffer[row, col] + cfg.depth_tolerance_cm)
    eye = camera.position.numpy()
    view = eye - points
    view /= np.linalg.norm(view, axis=1, keepdims=True).clip(1e-9)
    cos = (normals * view).sum(1)
    conf = np.where(seen, _smoothstep(cos, *cfg.grazing_cos), 0.0).astype(np.float32)
    return PhotoSamples(_bilinear(crop, x - 0.5, y - 0.5), conf)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Image [H, W, C] at pixel-centre coordinates x, y [N] (edges replicated) → [N, C] float32."""
    h, w = image.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.minimum(x.astype(np.int64), w - 2)
    y0 = np.minimum(y.astype(np.int64), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def hair_weight(neutral: np.ndarray) -> np.ndarray:
    """How likely each scalp point [N, 3] (neutral ICT coordinates, cm) is hair rather than skin, 0..1.

    The hairline rises from the nape (y ≈ −3 cm at the back) to the top of the forehead (y ≈ 10 cm in
    front); ears and neck stay skin.
    """
    y, z = neutral[:, 1], neutral[:, 2]
    hairline = -3.0 + 13.0 * np.clip((z + 6.0) / 12.0, 0.0, 1.0)
    return _smoothstep(y - hairline, -1.0, 1.5)


def _mesh_laplacian(triangles: np.ndarray, num_vertices: int) -> sparse.csr_matrix:
    """Graph Laplacian [V, V] of the mesh's edges (uniform weights)."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    ones = np.ones(len(edges))
    adj = sparse.coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(num_vertices, num_vertices))
    adj = (adj + adj.T).tocsr()
    adj.data[:] = 1.0
    return (sparse.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()


def colour_field(
    vertices: np.ndarray,  # [V, 3] the mesh, cm
    triangles: np.ndarray,  # [T, 3] the triangles the field lives on
    data: np.ndarray,  # [V, 3] observed colours
    weight: np.ndarray,  # [V] their confidence per cm² (0 where unobserved)
    prior: np.ndarray,  # [V, 3] colour to fall back to far from any observation
    prior_weight: float,  # per cm²
    smoothness: float,
) -> np.ndarray:
    """Vertex colours [V, 3] minimising Σ_v a_v (w_v |c − data|² + p |c − prior|²) + s Σ_edges |c_u − c_v|².

    a_v is the vertex's share of the surface (cm²). Uniform edge weights approximate the cotangent
    Laplacian on a well-shaped mesh, whatever its resolution, so colours spread about sqrt(s / p) cm
    from what was observed before the prior takes over, on the fine face and the coarse scalp alike.
    """
    num_vertices = len(vertices)
    corners = vertices[triangles]
    area = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    vertex_area = np.bincount(triangles.ravel(), np.repeat(area / 3.0, 3), minlength=num_vertices)
    lap = _mesh_laplacian(triangles, num_vertices)
    diag = vertex_area * (weight + prior_weight)
    # Vertices off these triangles have no area: pin them to the prior so the system stays regular.
    unused = vertex_area <= 0
    system = (sparse.diags(diag + unused) + smoothness * lap).tocsc()
    rhs = (vertex_area * weight)[:, None] * data + (vertex_area * prior_weight + unused)[:, None] * prior
    return np.asarray(spsolve(system, rhs), np.float32).reshape(num_vertices, 3)


# ----------------------------------------------------------------------------------------------
# Building
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
    ident = torch.from_numpy(np.asarray(identity.coefficients, np.float32))[None]
    rest_expr = torch.from_numpy(np.asarray(rest_expression, np.float32).reshape(1, NUM_EXPRESSIONS))
    photo_rot = torch.from_numpy(np.asarray(identity.rotation, np.float32))
    photo_trans = torch.from_numpy(np.asarray(identity.translation, np.float32))
    tris = head.triangles
    with torch.no_grad():
        rest = head.shape(ident, rest_expr)[0]  # canonical rest mesh (world)
        photo = head.pose(rest[None], photo_rot[None], photo_trans[None])[0]  # as in the photo
        full = portrait_camera(identity, (0, 0, image.shape[1], image.shape[0]), image.shape[1])
        head_verts = torch.cat([head.region_vertices("face"), head.region_vertices("head_and_neck")])
        above_neck = head_verts[rest[head_verts, 1] > cfg.neck_blend_cm[1]]
        head_px = project_points(photo[above_neck], full).numpy()
    if np.any(head_px[:, 2] <= 0):
        raise HeadsplatError("the fitted head is behind the camera; the fit failed")

    # ---- what the photo sees
    box = crop_box_for_head(head_px[:, :2], identity.image_size, cfg.crop_scale)
    size = cfg.photo_size
    camera = portrait_camera(identity, box, size)
    crop = crop_image(image, box, size)
    parts = [(head.region_triangles(n), w) for n, w in SURFACE_DENSITY.items()]
    chosen = torch.cat([t for t, _ in parts])
    drawn = torch.cat([chosen, *(head.region_triangles(n) for n in MOUTH_PARTS)]).numpy()
    photo_px = project_points(photo, camera).numpy()
    frags = rasterize_mesh(photo_px, tris.numpy()[drawn], size, size)
    covered = frags.triangle >= 0
    if covered.sum() < 0.02 * size * size:
        raise HeadsplatError("the fitted head covers almost none of the photo; the fit failed")
    frags.triangle = np.where(covered, drawn[np.maximum(frags.triangle, 0)], -1).astype(np.int32)

    # ---- where the Gaussians go: half the budget by surface area (denser on the face and eyes), half by
    # the photo's pixels, so what the photo shows in detail gets about one Gaussian per pixel
    with torch.no_grad():
        region_density = torch.cat([torch.full((len(t),), w) for t, w in parts]).numpy()
        corners = rest[tris[chosen]].numpy()
        area = 0.5 * np.linalg.norm(
            np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
        )
        by_area = region_density * area
        pixels = np.bincount(frags.triangle[covered], minlength=len(tris)).astype(np.float64)[chosen.numpy()]
        want = cfg.area_share * by_area / by_area.sum() + (1 - cfg.area_share) * pixels / max(
            pixels.sum(), 1.0
        )
        density = torch.from_numpy(want / area.clip(1e-9))
        n_base = int(cfg.base_share * cfg.num_gaussians)
        detail = surface_binding(
            rest, tris, chosen, density, cfg.num_gaussians - n_base, cfg.overlap, cfg.thickness
        )
        # A coarser layer of wider Gaussians just under the skin closes the gaps between the small ones.
        base = surface_binding(rest, tris, chosen, density, n_base, cfg.base_overlap, cfg.base_thickness)
        on_scalp = torch.isin(base.triangle, head.region_triangles("head_and_neck"))
        base.offset = -torch.where(on_scalp, cfg.base_depth_scalp, cfg.base_depth)
        surface = MeshBinding.concatenate([detail, base, rim_binding(rest, tris, chosen)])
        rest_frames = triangle_frames(rest, tris)
        mouth, mouth_colors = mouth_interior(head, rest, rest_frames, 1.0)  # brightness set below

    # ---- photo colours of the Gaussians and of their mirror points
    tri_np = tris.numpy()
    corners = photo.numpy()[tri_np]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    photo_normals = torch.from_numpy(normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12))

    def points_on(mesh: Tensor, tri: Tensor, bary: Tensor) -> np.ndarray:
        return (bary[:, :, None] * mesh[tris[tri]]).sum(1).numpy()

    own = sample_photo(
        points_on(photo, surface.triangle, surface.barycentric),
        photo_normals[surface.triangle].numpy(),
        crop,
        camera,
        frags.depth,
        cfg,
    )
    m_tri, m_bary, m_found = mirror_points(head, surface.triangle, surface.barycentric)
    mirror = sample_photo(
        points_on(photo, m_tri, m_bary), photo_normals[m_tri].numpy(), crop, camera, frags.depth, cfg
    )
    mirror.confidence *= m_found.numpy() * cfg.mirror_weight

    # ---- per-vertex observations, hair/skin priors, and the smooth colour field
    v_normals = head.vertex_normals(photo[None])[0].numpy()
    field_tris = tri_np[chosen.numpy()]
    num_v = head.num_vertices
    v_obs = sample_photo(photo.numpy(), v_normals, crop, camera, frags.depth, cfg)
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
    neutral = head.neutral.cpu().numpy()
    hair = np.zeros(num_v, np.float32)
    hn = head.region_vertices("head_and_neck").numpy()
    hair[hn] = hair_weight(neutral[hn])
    face_v = head.region_vertices("face").numpy()
    skin_rgb = _robust_colour(v_obs.rgb[face_v], v_obs.confidence[face_v] > 0.7, (0.75, 0.6, 0.5))
    scalp_seen = (v_obs.confidence > 0.5) & (hair > 0.6)
    hair_rgb = dominant_colour(
        np.concatenate([v_obs.rgb[scalp_seen], _pixels_above_head(crop, covered)]), FALLBACK_HAIR
    )
    prior = hair[:, None] * hair_rgb + (1 - hair[:, None]) * skin_rgb
    eyes = np.concatenate([head.region_vertices(n).numpy() for n in ("eyeball_left", "eyeball_right")])
    prior[eyes] = np.asarray(SCLERA_RGB, np.float32) * np.clip(np.mean(skin_rgb) / REFERENCE_SKIN, 0.3, 1.3)
    field = colour_field(
        photo.numpy(),
        field_tris,
        v_rgb,
        cfg.field_data_weight * v_conf,
        prior,
        cfg.prior_weight,
        cfg.smoothness,
    )
    field_at = (surface.barycentric[:, :, None].numpy() * field[tri_np[surface.triangle.numpy()]]).sum(1)

    a = own.confidence[:, None]
    b = ((1 - own.confidence) * mirror.confidence)[:, None]
    colors = a * own.rgb + b * mirror.rgb + (1 - a - b) * field_at
    skin_level = float(np.mean(skin_rgb))
    mouth_colors = (mouth_colors * float(np.clip(skin_level / REFERENCE_SKIN, 0.3, 1.6)) ** 0.5).clamp(0, 1)

    # The neck is an open tube: seen from below, its inside would show the outside's colours (the
    # Gaussians are two-sided). A dark lining under the neck's skin is what shows from inside instead;
    # from outside it is hidden behind the skin and its base layer.
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
    lining_colors = torch.from_numpy(np.asarray(MOUTH_SOCKET_RGB, np.float32)).expand(len(lining), 3)

    binding = MeshBinding.concatenate([surface, lining, mouth])
    neck_low, neck_high = cfg.neck_blend_cm
    avatar = HeadAvatar(
        head=head,
        identity=ident,
        rest_expression=rest_expr,
        binding=binding,
        colors=torch.cat(
            [torch.from_numpy(np.clip(colors, 0, 1)).float(), lining_colors, mouth_colors.float()]
        ),
        opacities=torch.full((len(binding),), 0.99),
        vertex_weights=((rest[:, 1] - neck_low) / (neck_high - neck_low)).clamp(0, 1),
        photo_rotation=photo_rot,
        photo_translation=photo_trans,
        photo_camera=camera,
        crop_box=box,
    )
    refine_colours(avatar, crop, cfg.refinement_rate * torch.from_numpy(own.confidence), cfg.refinement_steps)
    return avatar


def _robust_colour(rgb: np.ndarray, use: np.ndarray, fallback) -> np.ndarray:
    """Median colour [3] of the rows of rgb [N, 3] where `use`, or the fallback when under 20 rows."""
    if int(use.sum()) < 20:
        return np.asarray(fallback, np.float32)
    return np.median(rgb[use], axis=0).astype(np.float32)


def dominant_colour(rgb: np.ndarray, fallback, clusters: int = 3) -> np.ndarray:
    """The centre [3] of the largest of `clusters` k-means clusters of colours [N, 3] (hair, not the
    odd highlight, clip or background pixel), or the fallback when there are under 20 colours."""
    if len(rgb) < 20:
        return np.asarray(fallback, np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    cv2.setRNGSeed(0)
    _, labels, centres = cv2.kmeans(
        np.ascontiguousarray(rgb, np.float32), clusters, None, criteria, 2, cv2.KMEANS_PP_CENTERS
    )
    return centres[np.bincount(labels.ravel(), minlength=clusters).argmax()].astype(np.float32)


def _pixels_above_head(crop: np.ndarray, head_mask: np.ndarray) -> np.ndarray:
    """Colours [N, 3] of a thin band just outside the top half of the head's silhouette in the crop."""
    size = head_mask.shape[0]
    band = max(2, int(0.02 * size))
    mask = head_mask.astype(np.uint8)
    grown = cv2.dilate(mask, np.ones((2 * band + 1, 2 * band + 1), np.uint8))
    rows = np.nonzero(mask.any(1))[0]
    ring = (grown > 0) & (mask == 0)
    if len(rows):
        top, bottom = rows[0], rows[-1]
        ring[int(top + 0.45 * (bottom - top)) :] = False  # above the ears only: below is collar and neck
    return crop[ring]


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
    px = project_points(means[:n], cam)
    col = px[:, 0].floor().long().clamp(0, cam.width - 1)
    row = px[:, 1].floor().long().clamp(0, cam.height - 1)
    target = torch.from_numpy(crop)
    w = confidence[:, None].float()
    for _ in range(steps):
        out = rasterize(posed, cam, backend="cpu")
        # Only where the render is opaque: at the silhouette the photo shows background, not the head.
        error = (target - out.rgb) * (out.alpha[..., None] > 0.98)
        avatar.colors[:n] = (avatar.colors[:n] + w * error[row, col]).clamp(0, 1)
        posed.colors = avatar.colors


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

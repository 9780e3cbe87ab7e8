"""ICT-FaceKit Light as a batched torch module: identity + expression + pose → mesh.

Units are cm, y up, the face looks along +z, the subject's left is +x. A mesh is
``neutral + Σ identity[k] · identity_deltas[k] + Σ expression[j] · expression_deltas[j]``, then
rotated about `HEAD_PIVOT` by the head pose and translated.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models.errors import HeadsplatError
from models.latent import EXPRESSION_NAMES, NUM_EXPRESSIONS
from models.transforms import euler_to_matrix

DEFAULT_ASSET = Path(__file__).resolve().parents[1] / "assets" / "ict" / "ict_head.npz"

#: Where the head turns: roughly the top of the spine (atlanto-occipital joint), behind and below the
#: ears, in ICT's cm coordinates.
HEAD_PIVOT = (0.0, -4.0, -1.0)

#: Vertex ranges [start, stop) of ICT-FaceKit Light's parts (from its README), within the shipped copy.
VERTEX_REGIONS: dict[str, tuple[int, int]] = {
    "face": (0, 9409),
    "narrow_face": (0, 6706),
    "head_and_neck": (9409, 11248),
    "mouth_socket": (11248, 13294),
    "eye_socket_left": (13294, 13678),
    "eye_socket_right": (13678, 14062),
    "gums_and_tongue": (14062, 17039),
    "teeth": (17039, 21451),
    "teeth_upper": (17039, 19247),
    "teeth_lower": (19247, 21451),
    "eyeball_left": (21451, 23021),
    "eyeball_right": (23021, 24591),
    "iris_left": (22221, 23021),
    "iris_right": (23791, 24591),
}
#: Polygon ranges [start, stop) of the same parts.
POLYGON_REGIONS: dict[str, tuple[int, int]] = {
    "face": (0, 9230),
    "narrow_face": (0, 6560),
    "head_and_neck": (9230, 11144),
    "mouth_socket": (11144, 13226),
    "eye_socket_left": (13226, 13630),
    "eye_socket_right": (13630, 14034),
    "gums_and_tongue": (14034, 17006),
    "teeth": (17006, 21496),
    "teeth_upper": (17006, 19250),
    "teeth_lower": (19250, 21496),
    "eyeball_left": (21496, 23094),
    "eyeball_right": (23094, 24692),
    "iris_left": (22296, 23094),
    "iris_right": (23894, 24692),
}


@lru_cache(maxsize=2)
def _load_arrays(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError as err:
        raise HeadsplatError(f"head model not found at {path}; rebuild it with assets/ict/build.py") from err
    arrays["identity_deltas"] = (
        arrays.pop("identity_q").astype(np.float32) * arrays.pop("identity_scale")[:, None, None]
    )
    arrays["expression_deltas"] = (
        arrays.pop("expression_q").astype(np.float32) * arrays.pop("expression_scale")[:, None, None]
    )
    return arrays


def split_quads(faces: np.ndarray) -> np.ndarray:
    """[F, 4] polygons (-1 in the 4th slot for triangles) → [T, 3] triangles, quads cut along 0-2."""
    quads = faces[:, 3] >= 0
    first = faces[:, [0, 1, 2]]
    second = faces[quads][:, [0, 2, 3]]
    return np.concatenate([first, second]).astype(np.int64)


class HeadModel(nn.Module):
    """Batched ICT-FaceKit head: `vertices(identity, expression, rotation, translation)` → [B, V, 3] cm."""

    def __init__(self, num_identity: int = 50, asset: str | Path = DEFAULT_ASSET):
        super().__init__()
        arrays = _load_arrays(str(asset))
        available = arrays["identity_deltas"].shape[0]
        if not 0 <= num_identity <= available:
            raise HeadsplatError(
                f"the shipped head model has {available} identity modes; asked for {num_identity}"
            )
        names = tuple(str(n) for n in arrays["expression_names"])
        assert names == EXPRESSION_NAMES, "head model asset and models.latent disagree on expression order"
        self.num_identity = num_identity
        neutral = torch.from_numpy(arrays["neutral"])
        self.num_vertices = neutral.shape[0]
        self.register_buffer("neutral", neutral, persistent=False)  # [V, 3]
        ident = torch.from_numpy(np.ascontiguousarray(arrays["identity_deltas"][:num_identity]))
        self.register_buffer(
            "identity_basis", ident.reshape(num_identity, self.num_vertices * 3), persistent=False
        )  # [K, V*3]
        expr = torch.from_numpy(arrays["expression_deltas"])
        self.register_buffer(
            "expression_basis", expr.reshape(NUM_EXPRESSIONS, -1), persistent=False
        )  # [53, V*3]
        self.polygons = arrays["faces"]  # [F, 4] int32, -1 for triangles
        self.polygon_material = arrays["face_material"]  # [F]
        self.material_names = tuple(str(n) for n in arrays["material_names"])
        self.uvs = arrays["uvs"]  # [U, 2]
        self.polygon_uvs = arrays["face_uvs"]  # [F, 4]
        triangles = split_quads(self.polygons)
        # Which polygon each triangle came from (first halves of all polygons, then second halves of quads).
        self.triangle_polygon = np.concatenate(
            [np.arange(len(self.polygons)), np.nonzero(self.polygons[:, 3] >= 0)[0]]
        )
        self.register_buffer("triangles", torch.from_numpy(triangles), persistent=False)  # [T, 3]
        self.register_buffer(
            "landmarks68", torch.from_numpy(arrays["landmarks68"].astype(np.int64)), persistent=False
        )
        self.register_buffer("pivot", torch.tensor(HEAD_PIVOT, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------------------------------
    def region_vertices(self, name: str) -> Tensor:
        """Vertex indices [n] of a named part (see VERTEX_REGIONS)."""
        if name not in VERTEX_REGIONS:
            raise KeyError(f"unknown region {name!r}; known: {', '.join(VERTEX_REGIONS)}")
        start, stop = VERTEX_REGIONS[name]
        return torch.arange(start, stop, device=self.neutral.device)

    def region_triangles(self, name: str) -> Tensor:
        """Triangle indices [n] (into `triangles`) of a named part."""
        if name not in POLYGON_REGIONS:
            raise KeyError(f"unknown region {name!r}; known: {', '.join(POLYGON_REGIONS)}")
        start, stop = POLYGON_REGIONS[name]
        inside = (self.triangle_polygon >= start) & (self.triangle_polygon < stop)
        return torch.from_numpy(np.nonzero(inside)[0]).to(self.neutral.device)

    # ------------------------------------------------------------------------------------------
    def shape(self, identity: Tensor, expression: Tensor) -> Tensor:
        """Unposed mesh [B, V, 3] from identity [B, K] and expression [B, 53] (K ≤ num_identity)."""
        if identity.ndim != 2 or expression.ndim != 2 or expression.shape[1] != NUM_EXPRESSIONS:
            raise ValueError(
                f"identity must be [B, K] and expression [B, 53]; got {identity.shape}, {expression.shape}"
            )
        if identity.shape[0] != expression.shape[0] and identity.shape[0] != 1:
            raise ValueError("identity and expression batch sizes differ")
        k = identity.shape[1]
        if k > self.num_identity:
            raise HeadsplatError(f"{k} identity coefficients given; this head model has {self.num_identity}")
        dtype = self.neutral.dtype
        offsets = expression.to(dtype) @ self.expression_basis
        if k:
            offsets = offsets + identity.to(dtype) @ self.identity_basis[:k]
        return self.neutral + offsets.reshape(-1, self.num_vertices, 3)

    def pose(self, vertices: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
        """Rotate [B, V, 3] about the head pivot by (pitch, yaw, roll) [B, 3] radians, then translate [B, 3] cm."""
        matrix = euler_to_matrix(rotation.to(vertices.dtype))  # [B, 3, 3]
        centred = vertices - self.pivot
        return centred @ matrix.transpose(-1, -2) + self.pivot + translation.to(vertices.dtype)[:, None, :]

    def vertices(
        self,
        identity: Tensor,  # [B, K] or [1, K]
        expression: Tensor,  # [B, 53] in [0, 1]
        rotation: Tensor | None = None,  # [B, 3] radians
        translation: Tensor | None = None,  # [B, 3] cm
    ) -> Tensor:
        """Posed mesh vertices [B, V, 3] in cm."""
        verts = self.shape(identity, expression)
        batch = verts.shape[0]
        if rotation is None and translation is None:
            return verts
        rotation = torch.zeros(batch, 3, device=verts.device) if rotation is None else rotation
        translation = torch.zeros(batch, 3, device=verts.device) if translation is None else translation
        return self.pose(verts, rotation, translation)

    def forward(self, identity, expression, rotation=None, translation=None) -> Tensor:
        return self.vertices(identity, expression, rotation, translation)

    def landmarks(self, vertices: Tensor) -> Tensor:
        """The 68 Multi-PIE landmark points [B, 68, 3] of meshes [B, V, 3]."""
        return vertices[:, self.landmarks68]

    def triangle_normals(self, vertices: Tensor) -> Tensor:
        """Unit normals [B, T, 3] of each triangle (counter-clockwise winding faces outwards)."""
        tri = vertices[:, self.triangles]  # [B, T, 3, 3]
        normal = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
        return normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def vertex_normals(self, vertices: Tensor) -> Tensor:
        """Area-weighted unit vertex normals [B, V, 3]."""
        tri = vertices[:, self.triangles]
        face_normal = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
        normals = torch.zeros_like(vertices)
        for corner in range(3):
            normals.index_add_(1, self.triangles[:, corner], face_normal)
        return normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)

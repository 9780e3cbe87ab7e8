"""The mouth interior both avatars draw: ICT's 32 teeth, gums and tongue, and mouth socket, lit.

The teeth are tiled densely (`models.surface_placement`), each Gaussian shaded from the smoothed normal of
its own tooth under a light from the front and above, so single teeth, the dark gaps between them and a
highlight on each read; their albedo is ivory scaled to the photo's exposure and white balance (or the
colour of the photo's own teeth, where it shows them), never the skin's hue. Gums, tongue and the socket
are tiled more sparsely, darker the deeper they sit behind the front teeth; the socket and tongue
darken further while the jaw is open (`MouthInterior.shade`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.head_model import HeadModel
from models.mesh_binding import MeshBinding, local_coordinates
from models.surface_placement import surface_binding

#: Albedos under neutral light (linear-ish sRGB in [0, 1]); teeth are a warm ivory, not the skin's hue.
TEETH_RGB = (0.93, 0.89, 0.80)
GUMS_TONGUE_RGB = (0.72, 0.33, 0.34)
MOUTH_SOCKET_RGB = (0.30, 0.10, 0.10)
#: The head model's parts inside the mouth, with their albedos.
MOUTH_PARTS = {"teeth": TEETH_RGB, "gums_and_tongue": GUMS_TONGUE_RGB, "mouth_socket": MOUTH_SOCKET_RGB}
#: Skin brightness (mean of RGB) that the albedos above were chosen for, and that skin's colour.
REFERENCE_SKIN = 0.6
REFERENCE_SKIN_RGB = (0.72, 0.58, 0.50)
#: Where the light comes from in the head's own frame (the face looks along +z, y is up): the front, a
#: little above, as in most portraits.
LIGHT_DIRECTION = (0.0, 0.45, 1.0)
#: How much darker each part gets with the jaw wide open (see `MouthInterior.shade`).
OPEN_JAW_DARKENING = {"teeth": 0.0, "gums_and_tongue": 0.3, "mouth_socket": 0.45}
#: How much lower than ICT's the upper teeth are drawn (cm).
UPPER_TEETH_DROP_CM = 0.4
#: Gaussians on the gums and tongue, and on the socket, each relative to the teeth's.
OTHER_SHARE = 0.3
#: Lip gap (cm) at which the open-jaw darkening is full.
WIDE_OPEN_CM = 2.0


@dataclass
class MouthPalette:
    """The photo's light for the mouth: exposure (the skin's brightness over REFERENCE_SKIN), white balance
    (per-channel gains with unit mean) and, where the photo shows teeth, their own colour."""

    exposure: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    teeth_rgb: tuple[float, float, float] | None = None

    def albedo(self, rgb: tuple[float, float, float]) -> Tensor:
        """An albedo [3] under this photo's light."""
        gain = float(np.clip(self.exposure, 0.35, 1.5))
        return (torch.tensor(rgb) * gain * torch.tensor(self.white_balance)).clamp(0, 1)

    def teeth_albedo(self) -> Tensor:
        """The teeth's albedo [3]: the photo's own teeth, unshaded, or ivory under the photo's light."""
        if self.teeth_rgb is not None:
            # The photo's teeth are seen face-on, where the shading below gives about FRONT_SHADE.
            return (torch.tensor(self.teeth_rgb) / FRONT_SHADE).clamp(0, 1)
        return self.albedo(TEETH_RGB)


#: The teeth's shade (`_teeth_shade`) on a front tooth facing the light.
FRONT_SHADE = 0.92


@dataclass
class MouthInterior:
    """The mouth's Gaussians bound on the rest mesh, their colours, and how each darkens with the jaw."""

    binding: MeshBinding
    colors: Tensor  # [N, 3]
    darkening: Tensor  # [N] share of its colour each loses with the jaw wide open

    def __len__(self) -> int:
        return len(self.binding)

    def shade(self, lip_gap_cm: float) -> Tensor:
        """The colours [N, 3] for a frame whose lips are `lip_gap_cm` apart: the socket and tongue get darker
        as the jaw opens (the back of a wide-open mouth is further from the light)."""
        openness = min(max(lip_gap_cm / WIDE_OPEN_CM, 0.0), 1.0)
        return self.colors * (1.0 - openness * self.darkening)[:, None]


def _depth_shade(depth_behind_front: Tensor, strength: float) -> Tensor:
    """Ambient occlusion by depth behind the front teeth (cm): light reaches the back of the mouth less."""
    return (1.0 - strength * depth_behind_front / 3.0).clamp(0.2, 1.0)


def _teeth_shade(normal: Tensor, depth_behind_front: Tensor) -> tuple[Tensor, Tensor]:
    """Diffuse shade [N] and a white highlight [N] of teeth points with (head-frame) normals [N, 3]."""
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIRECTION), dim=0)
    view = torch.tensor([0.0, 0.0, 1.0])
    half = torch.nn.functional.normalize(light + view, dim=0)
    lambert = (normal @ light).clamp_min(0.0)
    # Sides of a tooth turn away from the light and the viewer: the gaps between teeth go darker.
    facing = (normal @ view).clamp_min(0.0)
    diffuse = (0.45 + 0.55 * lambert) * (0.6 + 0.4 * facing)
    highlight = 0.2 * (normal @ half).clamp_min(0.0) ** 40
    occlusion = _depth_shade(depth_behind_front, 0.4)
    return diffuse * occlusion, highlight * occlusion


def mouth_interior(
    head: HeadModel,
    rest_mesh: Tensor,  # [V, 3] the mesh the Gaussians are bound on, cm
    frames: tuple[Tensor, Tensor],  # triangle_frames(rest_mesh, head.triangles)
    palette: MouthPalette,
    num_teeth_gaussians: int = 12000,
    behind_cm: float = 0.04,
) -> MouthInterior:
    """The mouth interior's Gaussians: the teeth tiled with about `num_teeth_gaussians`, gums, tongue and
    socket with OTHER_SHARE of that each; all `behind_cm` under their surface, so where a photo's own pixels sit on the
    same surface those are what shows."""
    neutral = head.neutral
    front_z = neutral[head.region_vertices("teeth"), 2].max()
    frame, size = frames

    # Teeth: tiled, shaded per tooth in the head's own frame (normals of the neutral mesh).
    teeth_tri = head.region_triangles("teeth")
    corners = head.triangles[teeth_tri]
    area = 0.5 * torch.linalg.cross(
        neutral[corners[:, 1]] - neutral[corners[:, 0]],
        neutral[corners[:, 2]] - neutral[corners[:, 0]],
        dim=-1,
    ).norm(dim=-1)
    normals = head.vertex_normals(neutral[None])[0]  # the teeth share no vertex with other parts
    tri_normal = torch.nn.functional.normalize(normals[corners].sum(1), dim=-1)
    # More Gaussians where the teeth face the viewer (the front rows), fewer on their hidden backs.
    density = (0.15 + tri_normal[:, 2].clamp_min(0.0)) * torch.ones_like(area)
    teeth = surface_binding(rest_mesh, head.triangles, teeth_tri, density, num_teeth_gaussians)
    bary = teeth.barycentric
    g_corners = head.triangles[teeth.triangle]
    g_normal = torch.nn.functional.normalize((bary[:, :, None] * normals[g_corners]).sum(1), dim=-1)
    g_depth = front_z - (bary[:, :, None] * neutral[g_corners]).sum(1)[:, 2]
    diffuse, highlight = _teeth_shade(g_normal, g_depth)
    # What light a tooth loses is made up a little by the warm light bounced off the gums and tongue, so
    # shadowed teeth go warm, not grey.
    albedo = palette.teeth_albedo()
    bounce = 0.25 * (1.0 - diffuse)[:, None] * palette.albedo(GUMS_TONGUE_RGB)
    teeth_colors = (albedo * diffuse[:, None] + bounce + highlight[:, None]).clamp(0, 1)
    k = size[teeth.triangle]
    teeth.offset = teeth.offset - behind_cm / k
    # ICT's upper incisors end at its lip line; most adults show a couple of millimetres of them below a
    # relaxed upper lip, so the upper row is drawn that much lower (still rigid with the skull).
    upper = torch.isin(teeth.triangle, head.region_triangles("teeth_upper"))
    if UPPER_TEETH_DROP_CM and upper.any():
        marks = rest_mesh[head.landmarks68]
        up = torch.nn.functional.normalize(marks[27] - marks[8], dim=0)  # nose bridge over the chin
        means, _, _ = teeth.subset(upper).pose(rest_mesh, head.triangles)
        bary, offset = local_coordinates(
            rest_mesh, head.triangles, teeth.triangle[upper], means - UPPER_TEETH_DROP_CM * up
        )
        teeth.barycentric[upper] = bary
        teeth.offset[upper] = offset / k[upper]

    # Gums, tongue and socket: tiled too (one big Gaussian per triangle would spill over the teeth in
    # front of it), darker with depth.
    parts, colors, darkening = [teeth], [teeth_colors], [torch.zeros(len(teeth))]
    for name in ("gums_and_tongue", "mouth_socket"):
        tri = head.region_triangles(name)
        binding = surface_binding(
            rest_mesh, head.triangles, tri, torch.ones(len(tri)), int(num_teeth_gaussians * OTHER_SHARE)
        )
        g_corners = head.triangles[binding.triangle]
        depth = front_z - (binding.barycentric[:, :, None] * neutral[g_corners]).sum(1)[:, 2]
        binding.offset = binding.offset - behind_cm / size[binding.triangle]
        parts.append(binding)
        colors.append(palette.albedo(MOUTH_PARTS[name])[None] * _depth_shade(depth, 0.6)[:, None])
        darkening.append(torch.full((len(binding),), OPEN_JAW_DARKENING[name]))
    return MouthInterior(
        MeshBinding.concatenate(parts), torch.cat(colors).float().clamp(0, 1), torch.cat(darkening).float()
    )

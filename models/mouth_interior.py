"""The mouth interior both avatars draw: ICT's teeth, gums and tongue, and mouth socket, lit like the photo."""

from __future__ import annotations

import torch
from torch import Tensor

from models.head_model import HeadModel
from models.mesh_binding import MeshBinding
from models.transforms import matrix_to_quaternion

#: Colours of the mouth interior under neutral light (sRGB in [0, 1]), one per part in MOUTH_PARTS; scaled
#: per channel by the photo's skin colour relative to REFERENCE_SKIN_RGB, so a dim or warm portrait gets
#: dim or warm teeth.
TEETH_RGB = (0.74, 0.66, 0.52)
GUMS_TONGUE_RGB = (0.62, 0.27, 0.28)
MOUTH_SOCKET_RGB = (0.16, 0.05, 0.05)
#: The head model's parts inside the mouth, with their colours.
MOUTH_PARTS = {"teeth": TEETH_RGB, "gums_and_tongue": GUMS_TONGUE_RGB, "mouth_socket": MOUTH_SOCKET_RGB}
#: Skin brightness (mean of RGB) that the colours above were chosen for, and that skin's colour.
REFERENCE_SKIN = 0.6
REFERENCE_SKIN_RGB = (0.72, 0.58, 0.50)


def mouth_interior(
    head: HeadModel,
    rest_mesh: Tensor,  # [V, 3] the mesh the Gaussians are bound on, cm
    frames: tuple[Tensor, Tensor],  # triangle_frames(rest_mesh, head.triangles)
    light: float | Tensor,
) -> tuple[MeshBinding, Tensor]:
    """Gaussians on ICT's teeth, gums/tongue and mouth socket, one per triangle, and their colours [N, 3].

    `light` is the photo's light relative to neutral: a number, or per-channel [3] (its colour cast, so
    teeth in a warm photo are warm too). Deeper parts are darker (less light reaches the back of the mouth).
    """
    frame, size = frames
    tri = torch.cat([head.region_triangles(n) for n in MOUTH_PARTS])
    colours = torch.cat(
        [torch.tensor(rgb).expand(len(head.region_triangles(n)), 3) for n, rgb in MOUTH_PARTS.items()]
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

"""Pinhole cameras in the OpenCV convention (x right, y down, z forward), units cm and pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

DEFAULT_NEAR_CM = 1.0
"""Centres closer than this to the camera are culled. gsplat's default is 0.01 (scene units); with heads
in cm at ~50 cm a Gaussian within 1 cm of the lens is never wanted and would cover the whole image."""
DEFAULT_FAR_CM = 1.0e4
"""Centres farther than this (100 m) are culled; gsplat's default is 1e10."""


@dataclass
class Camera:
    """A pinhole camera: intrinsics in pixels, a rigid world-to-camera transform, clip distances in cm.

    Camera space is OpenCV's: x right, y down, z forward (depth). Pixel (j, i) has its centre at
    (j + 0.5, i + 0.5), as in gsplat.
    """

    fx: float
    """Focal length along x, pixels."""
    fy: float
    """Focal length along y, pixels."""
    cx: float
    """Principal point x, pixels (width / 2 for a centred camera)."""
    cy: float
    """Principal point y, pixels."""
    width: int
    """Image width, pixels."""
    height: int
    """Image height, pixels."""
    world_to_camera: Tensor  # [4, 4]
    """Rigid transform from world (cm) to camera space (cm): [R | t; 0 0 0 1]."""
    near: float = DEFAULT_NEAR_CM
    """Gaussians whose centre depth is below this (cm) are not drawn."""
    far: float = DEFAULT_FAR_CM
    """Gaussians whose centre depth is above this (cm) are not drawn."""

    def __post_init__(self) -> None:
        self.world_to_camera = torch.as_tensor(self.world_to_camera, dtype=torch.float32).cpu()
        m = self.world_to_camera
        if m.shape != (4, 4):
            raise ValueError(f"Camera.world_to_camera must be [4, 4], got {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise ValueError("Camera.world_to_camera has NaN/inf values")
        r = m[:3, :3].double()
        if not torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-4) or r.det() < 0:
            raise ValueError(
                "Camera.world_to_camera must be rigid (a rotation and a translation, no scale or mirror); "
                "build it with Camera.look_at or orthonormalise the rotation"
            )
        if not torch.equal(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0])):
            raise ValueError("Camera.world_to_camera's last row must be (0, 0, 0, 1)")
        for name in ("fx", "fy", "cx", "cy", "near", "far"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"Camera.{name} must be finite, got {value}")
            setattr(self, name, value)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"Camera focal lengths must be > 0 pixels, got fx={self.fx}, fy={self.fy}")
        if (
            int(self.width) != self.width
            or int(self.height) != self.height
            or self.width < 1
            or self.height < 1
        ):
            raise ValueError(f"Camera size must be positive whole pixels, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if not 0 < self.near < self.far:
            raise ValueError(f"Camera needs 0 < near < far (cm), got near={self.near}, far={self.far}")

    @property
    def K(self) -> Tensor:  # [3, 3]
        """Intrinsic matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]."""
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def position(self) -> Tensor:  # [3]
        """Camera centre in world space, cm."""
        r, t = self.world_to_camera[:3, :3].double(), self.world_to_camera[:3, 3].double()
        return (-r.T @ t).float()

    def resized(self, width: int, height: int) -> Camera:
        """The same view at another image size (intrinsics scaled with the image)."""
        sx, sy = width / self.width, height / self.height
        return replace(
            self,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            width=width,
            height=height,
        )

    @classmethod
    def from_focal(
        cls,
        focal: float,
        width: int,
        height: int,
        world_to_camera: Tensor | None = None,  # [4, 4]
        near: float = DEFAULT_NEAR_CM,
        far: float = DEFAULT_FAR_CM,
    ) -> Camera:
        """A centred camera with square pixels and focal length `focal` in pixels (e.g. a fitted portrait's).

        `world_to_camera` defaults to the identity (world space is camera space). A 35 mm-equivalent focal
        length f_mm converts as focal = f_mm / 36 * width for a landscape frame.
        """
        m = torch.eye(4) if world_to_camera is None else world_to_camera
        return cls(focal, focal, width / 2.0, height / 2.0, width, height, m, near, far)

    @classmethod
    def look_at(
        cls,
        eye: Sequence[float] | Tensor,  # [3] cm
        target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),  # [3] cm
        up: Sequence[float] | Tensor = (0.0, 1.0, 0.0),  # [3]
        *,
        width: int = 512,
        height: int = 512,
        fov_y: float = math.radians(30.0),
        focal: float | None = None,
        near: float = DEFAULT_NEAR_CM,
        far: float = DEFAULT_FAR_CM,
    ) -> Camera:
        """A camera at `eye` looking at `target` with world `up` pointing up in the image.

        With the head model's convention (cm, y up, face along +z), ``Camera.look_at((0, 0, 55))`` sees the
        face upright and frontal: world +y is image up and world +x is image right (the subject's left).
        `fov_y` is the vertical field of view in radians; `focal` (pixels) overrides it.
        """
        eye_t = torch.as_tensor(eye, dtype=torch.float64).reshape(3)
        target_t = torch.as_tensor(target, dtype=torch.float64).reshape(3)
        up_t = torch.as_tensor(up, dtype=torch.float64).reshape(3)
        forward = target_t - eye_t
        if forward.norm() < 1e-9:
            raise ValueError("Camera.look_at needs eye != target")
        forward = forward / forward.norm()
        right = torch.linalg.cross(forward, up_t)
        if right.norm() < 1e-6 * max(float(up_t.norm()), 1e-12):
            raise ValueError("Camera.look_at: the view direction is parallel to `up`; pick another up vector")
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        rot = torch.stack([right, down, forward])  # rows: camera axes in world space
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = rot
        m[:3, 3] = -rot @ eye_t
        if focal is None:
            if not 0 < fov_y < math.pi:
                raise ValueError(f"fov_y must be in (0, pi) radians, got {fov_y}")
            focal = 0.5 * height / math.tan(0.5 * fov_y)
        return cls(focal, focal, width / 2.0, height / 2.0, width, height, m.float(), near, far)


def orbit_cameras(
    n_views: int,
    distance: float = 55.0,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    pitch: float = 0.0,
    yaw_start: float = 0.0,
    yaw_range: float = 2.0 * math.pi,
    *,
    width: int = 512,
    height: int = 512,
    fov_y: float = math.radians(30.0),
    near: float = DEFAULT_NEAR_CM,
    far: float = DEFAULT_FAR_CM,
) -> list[Camera]:
    """A turntable: `n_views` cameras `distance` cm from `target`, yaw steps about world y (radians).

    Yaw 0 is in front of the face (+z); positive yaw moves the camera towards +x (the subject's left);
    positive `pitch` (radians) raises the camera so it looks down. The views cover
    [yaw_start, yaw_start + yaw_range) in equal steps, so a full turn does not repeat its first frame.
    """
    if n_views < 1:
        raise ValueError(f"orbit_cameras needs n_views >= 1, got {n_views}")
    if abs(pitch) >= math.radians(89.9):
        raise ValueError(f"orbit pitch must be within (-89.9, 89.9) degrees, got {math.degrees(pitch):.1f}")
    centre = torch.as_tensor(target, dtype=torch.float64).reshape(3)
    cams = []
    for k in range(n_views):
        yaw = yaw_start + yaw_range * k / n_views
        offset = torch.tensor(
            [math.cos(pitch) * math.sin(yaw), math.sin(pitch), math.cos(pitch) * math.cos(yaw)],
            dtype=torch.float64,
        )
        cams.append(
            Camera.look_at(
                centre + distance * offset,
                centre,
                width=width,
                height=height,
                fov_y=fov_y,
                near=near,
                far=far,
            )
        )
    return cams

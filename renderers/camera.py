"""Pinhole cameras in the OpenCV convention (x right, y down, z forward), units cm and pixels.

The one camera of headsplat and the one projection of points through it: the renderer draws with
`Camera`, the face fitter fits one (`Camera.photo`, its focal length optimised through `project_points`),
and `Camera.project` places mesh points in an image for the avatars.

Pixel coordinates follow gsplat: pixel (j, i) spans [j, j + 1) × [i, i + 1) and has its centre at
(j + 0.5, i + 0.5). OpenCV, image arrays and MediaPipe landmarks put pixel centres at whole coordinates
instead, half a pixel less; the camera's methods that give pixels (`project`, `principal_point`,
`intrinsics`) take `pixel_centre=OPENCV_PIXEL_CENTRE` for those, which moves the principal point and
nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

PIXEL_CENTRE = 0.5
"""Where pixel (0, 0)'s centre sits in a camera's pixel coordinates, along x and y (gsplat's convention)."""
OPENCV_PIXEL_CENTRE = 0.0
"""The same in OpenCV's convention, the one of image arrays, `cv2` and MediaPipe landmarks."""
PHOTO_WORLD_TO_CAMERA = (
    (1.0, 0.0, 0.0, 0.0),
    (0.0, -1.0, 0.0, 0.0),
    (0.0, 0.0, -1.0, 0.0),
    (0.0, 0.0, 0.0, 1.0),
)
"""World-to-camera transform of the camera that took a portrait (`Camera.photo`): at the world origin,
looking along −z at the head model, which faces +z with y up. Camera axes are (x, −y, −z) of world axes
(a 180° turn about x), so a head in front of it has a negative world z (about −50 cm for a portrait)."""
_PHOTO_WORLD_TO_CAMERA = torch.tensor(PHOTO_WORLD_TO_CAMERA)

DEFAULT_NEAR_CM = 1.0
"""Centres closer than this to the camera are culled. gsplat's default is 0.01 (scene units); with heads
in cm at ~50 cm a Gaussian within 1 cm of the lens is never wanted and would cover the whole image."""
DEFAULT_FAR_CM = 1.0e4
"""Centres farther than this (100 m) are culled; gsplat's default is 1e10."""


def camera_points(points, world_to_camera):  # [..., 3] world cm, [4, 4] → [..., 3] camera cm
    """Camera-space coordinates (x right, y down, z depth) of world points; torch tensors or numpy arrays."""
    if isinstance(points, Tensor):
        m = torch.as_tensor(world_to_camera).to(points)
    else:
        points = np.asarray(points, dtype=np.result_type(points, np.float32))
        m = np.asarray(world_to_camera, dtype=points.dtype)
    return points @ m[:3, :3].T + m[:3, 3]


def project_points(
    points,  # [..., 3] world cm, torch or numpy
    fx,  # focal length along x, pixels: a number, or a 0-d tensor (e.g. one being optimised)
    fy,  # focal length along y, pixels
    cx,  # principal point x, pixels
    cy,  # principal point y, pixels
    world_to_camera,  # [4, 4] rigid transform, world cm → camera cm
    min_depth: float = 1e-6,
):  # → [..., 3]: u, v in pixels, camera depth in cm
    """Pinhole projection u = fx·x/z + cx, v = fy·y/z + cy of world points in camera space, with depth z.

    u, v use z clamped to `min_depth` (cm) so that points on or behind the camera stay finite; the
    returned depth is not clamped, so callers can tell them apart. In torch the result is differentiable
    in the points and in fx, fy, cx, cy when those are tensors; `projection_jacobian` is its derivative.
    """
    cam = camera_points(points, world_to_camera)
    depth = cam[..., 2:3]
    if isinstance(cam, Tensor):

        def pair(a, b) -> Tensor:
            return torch.stack([torch.as_tensor(v, dtype=cam.dtype, device=cam.device) for v in (a, b)])

        xy = cam[..., :2] / depth.clamp_min(min_depth) * pair(fx, fy) + pair(cx, cy)
        return torch.cat([xy, depth], dim=-1)
    xy = cam[..., :2] / np.maximum(depth, min_depth) * np.array([fx, fy], cam.dtype) + np.array(
        [cx, cy], cam.dtype
    )
    return np.concatenate([xy, depth], axis=-1)


def projection_jacobian(
    points: np.ndarray,  # [..., 3] world cm
    fx: float,
    fy: float,
    world_to_camera: np.ndarray,  # [4, 4]
    min_depth: float = 1e-6,
) -> np.ndarray:  # [..., 2, 3]
    """d(u, v)/d(world point) of `project_points` (numpy, for solvers with analytic Jacobians; torch callers
    get it from autograd). Depths are clamped as in `project_points`."""
    m = np.asarray(world_to_camera, np.float64)
    cam = camera_points(np.asarray(points, np.float64), m)
    z = np.maximum(cam[..., 2], min_depth)
    jac = np.zeros((*cam.shape[:-1], 2, 3))
    jac[..., 0, 0] = fx / z
    jac[..., 1, 1] = fy / z
    jac[..., 0, 2] = -fx * cam[..., 0] / z**2
    jac[..., 1, 2] = -fy * cam[..., 1] / z**2
    # Chain rule through the world → camera rotation, as one [2N, 3] product (20× faster than a batched one).
    return (jac.reshape(-1, 3) @ m[:3, :3]).reshape(jac.shape)


@dataclass
class Camera:
    """A pinhole camera: intrinsics in pixels, a rigid world-to-camera transform, clip distances in cm.

    Camera space is OpenCV's: x right, y down, z forward (depth). Pixel (j, i) has its centre at
    (j + 0.5, i + 0.5), as in gsplat (see the module docstring for OpenCV's convention).
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
        if self.world_to_camera.shape != (4, 4):
            raise ValueError(
                f"Camera.world_to_camera must be [4, 4], got {tuple(self.world_to_camera.shape)}"
            )
        # Checked in numpy: the fitter makes a camera per video frame, and torch's per-op overhead was 5× this.
        m = self.world_to_camera.detach().numpy().astype(np.float64)
        if not np.isfinite(m).all():
            raise ValueError("Camera.world_to_camera has NaN/inf values")
        r, eye = m[:3, :3], np.eye(3)
        # np.allclose(r @ r.T, eye, atol=1e-4) written out: allclose alone cost 25 µs.
        if not (np.abs(r @ r.T - eye) <= 1e-4 + 1e-5 * eye).all() or np.linalg.det(r) < 0:
            raise ValueError(
                "Camera.world_to_camera must be rigid (a rotation and a translation, no scale or mirror); "
                "build it with Camera.look_at or orthonormalise the rotation"
            )
        if not np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]):
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
        """Intrinsic matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (float32, as gsplat takes it)."""
        return torch.tensor(self.intrinsics(), dtype=torch.float32)

    def principal_point(self, pixel_centre: float = PIXEL_CENTRE) -> tuple[float, float]:
        """(cx, cy) in pixels whose centres sit at `pixel_centre` (`OPENCV_PIXEL_CENTRE` for OpenCV's)."""
        shift = pixel_centre - PIXEL_CENTRE
        return self.cx + shift, self.cy + shift

    def intrinsics(self, pixel_centre: float = PIXEL_CENTRE) -> np.ndarray:  # [3, 3] float64
        """Intrinsic matrix K in pixels whose centres sit at `pixel_centre` (OpenCV's for `cv2.solvePnP`)."""
        cx, cy = self.principal_point(pixel_centre)
        return np.array([[self.fx, 0.0, cx], [0.0, self.fy, cy], [0.0, 0.0, 1.0]])

    def project(self, points, pixel_centre: float = PIXEL_CENTRE):  # [..., 3] world cm → [..., 3]
        """Pixel x, pixel y and camera depth (cm) of world points, torch or numpy (see `project_points`).

        Pixels are this camera's (gsplat's convention) unless `pixel_centre` says otherwise: with
        `OPENCV_PIXEL_CENTRE` they compare with MediaPipe landmarks and index image arrays directly.
        """
        cx, cy = self.principal_point(pixel_centre)
        return project_points(points, self.fx, self.fy, cx, cy, self.world_to_camera)

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

    def cropped(self, box: tuple[float, float, float, float], size: int) -> Camera:
        """The view of a square `box` (x0, y0, x1, y1, pixels of this camera) resampled to size × size."""
        x0, y0, x1, _ = box
        scale = size / (x1 - x0)
        return replace(
            self,
            fx=self.fx * scale,
            fy=self.fy * scale,
            cx=(self.cx - x0) * scale,
            cy=(self.cy - y0) * scale,
            width=size,
            height=size,
        )

    @classmethod
    def photo(cls, focal: float, width: int, height: int) -> Camera:
        """The camera that took a portrait of the head model: at the world origin looking along −z
        (`PHOTO_WORLD_TO_CAMERA`), square pixels of focal length `focal`, principal point at the centre."""
        return cls.from_focal(focal, width, height, _PHOTO_WORLD_TO_CAMERA.clone())

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

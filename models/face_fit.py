"""The result of fitting the ICT head to one image (`models.fitting.FaceFitter`), and the camera it is seen
through: the photo's (`Camera.photo`), whose pixels are the landmarks' (OpenCV's convention)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from models.latent import EXPRESSION_INDEX, Identity
from renderers.camera import OPENCV_PIXEL_CENTRE, PHOTO_WORLD_TO_CAMERA, Camera, camera_points


@dataclass
class FaceFit:
    """The head fitted to one image: ICT parameters, pose in the world and the camera."""

    identity: np.ndarray  # [K] ICT identity coefficients
    expression: np.ndarray  # [53] weights in [0, 1]
    rotation: np.ndarray  # [3] pitch, yaw, roll (radians), absolute
    translation: np.ndarray  # [3] cm, world (head about −50 cm along z in front of the camera)
    focal_px: float  # focal length in pixels
    image_size: tuple[int, int]  # (width, height)
    error_px: float = 0.0  # mean 2D distance between observed and fitted landmarks (pixels)
    inter_ocular_px: float = 0.0  # observed outer-eye-corner distance (pixels), the error's scale

    @property
    def camera(self) -> Camera:
        """The photo's camera (`Camera.photo`) with the fitted focal length."""
        return Camera.photo(self.focal_px, *self.image_size)

    @property
    def relative_error(self) -> float:
        """Mean landmark error as a fraction of the inter-ocular distance."""
        return self.error_px / max(self.inter_ocular_px, 1e-9)

    def to_identity(self) -> Identity:
        """The identity latent, with this fit as its rest pose and camera."""
        return Identity(self.identity, self.rotation, self.translation, self.focal_px, self.image_size)


def expression_value(fit: FaceFit, name: str) -> float:
    """One named expression weight of a fit (ICT name, e.g. 'jawOpen')."""
    return float(fit.expression[EXPRESSION_INDEX[name]])


@functools.lru_cache(maxsize=16)
def landmark_principal_point(width: int, height: int) -> tuple[float, float]:
    """The photo camera's principal point in landmark pixels (for loops too hot to make a `Camera`)."""
    return Camera.photo(1.0, width, height).principal_point(OPENCV_PIXEL_CENTRE)


def default_focal(width: int, height: int) -> float:
    """A prior focal length (pixels) when none is known: a ~50 mm-equivalent lens (1.2 × the longer side)."""
    return 1.2 * max(width, height)


def world_to_camera(vertices):  # [..., 3] world cm → [..., 3] camera cm (numpy or torch)
    """OpenCV camera coordinates (x right, y down, z forward) of head-world points seen by the photo camera."""
    return camera_points(vertices, PHOTO_WORLD_TO_CAMERA)


def project(vertices, camera: Camera):  # vertices: [..., V, 3] world cm → [..., V, 2] pixels
    """Landmark pixels (OpenCV's convention, x right, y down) of head-world points: `camera.project`'s
    u, v with `OPENCV_PIXEL_CENTRE`; torch tensors and numpy arrays alike."""
    return camera.project(vertices, OPENCV_PIXEL_CENTRE)[..., :2]

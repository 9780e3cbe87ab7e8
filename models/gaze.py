"""Gaze from iris centres: each ICT eyeball turns about its centre until its cornea apex projects onto the
iris centre seen in the image, and the turn is written into the eyeLook* expression weights.

ICT's eyeLook shapes move only the lids and the 468-point mesh has no iris, so the landmark fit cannot see
gaze; MediaPipe's iris model gives the two iris centres instead (`FaceTracker.iris`).
"""

from __future__ import annotations

import math

import numpy as np

from models.errors import HeadsplatError
from models.face_fit import FaceFit
from models.head_model import VERTEX_REGIONS, HeadModel
from models.latent import EXPRESSION_INDEX, EYE_LOOK_RANGE_RAD
from models.transforms import euler_to_matrix_and_derivatives
from renderers.camera import OPENCV_PIXEL_CENTRE


class EyeGaze:
    """The eyeballs of a head model (rotation centres, cornea apexes, how identity moves them) and the
    eye turn that matches observed iris centres."""

    def __init__(self, head: HeadModel, num_identity: int):
        """Eyeball rotation centres (a sphere fitted to each eyeball, cornea excluded) and the cornea apex."""
        self.num_identity = num_identity
        self.pivot = head.pivot.numpy().astype(np.float64)
        neutral = head.neutral.numpy().astype(np.float64)
        basis = head.identity_basis[:num_identity].reshape(num_identity, -1, 3).double().numpy()
        centres, apexes, shifts = [], [], []
        for side in ("right", "left"):  # subject's right eye first, as the iris centres come
            start, stop = VERTEX_REGIONS[f"eyeball_{side}"]
            iris_start, iris_stop = VERTEX_REGIONS[f"iris_{side}"]
            ball = np.setdiff1d(np.arange(start, stop), np.arange(iris_start, iris_stop))
            pts = neutral[ball]
            solution = np.linalg.lstsq(np.c_[2 * pts, np.ones(len(pts))], (pts**2).sum(1), rcond=None)[0]
            iris = np.arange(iris_start, iris_stop)
            apex = iris[np.argmax(neutral[iris, 2])]  # the front of the cornea
            centres.append(solution[:3])
            apexes.append(neutral[apex])
            # Identity moves an eyeball rigidly (to first order): by its vertices' mean offset.
            shifts.append(basis[:, start:stop].mean(1))
        self._eye_centre = np.stack(centres)  # [2, 3] head cm
        self._eye_gaze = np.stack(apexes) - self._eye_centre  # [2, 3] centre → cornea apex at rest
        self._eye_shift = np.stack(shifts, 1) if num_identity else np.zeros((0, 2, 3))  # [K, 2, 3]

    def expression(self, fit: FaceFit, iris: np.ndarray) -> np.ndarray:  # → [53] float32
        """`fit`'s expression with its eyeLook* weights set from iris centres [2, 2] (pixels in OpenCV's
        convention, as the landmarks; subject's right, left), at `EYE_LOOK_RANGE_RAD` per unit weight."""
        iris = np.asarray(iris, np.float64)
        if iris.shape != (2, 2) or not np.all(np.isfinite(iris)):
            raise HeadsplatError(f"iris centres must be a finite [2, 2] array; got {list(iris.shape)}")
        head_rot, _ = euler_to_matrix_and_derivatives(np.asarray(fit.rotation, np.float64))
        shift = np.tensordot(np.asarray(fit.identity, np.float64)[: self.num_identity], self._eye_shift, 1)
        camera = fit.camera  # the photo camera: at the world origin, so world points are rays' offsets
        cx, cy = camera.principal_point(OPENCV_PIXEL_CENTRE)
        camera_axes = camera.world_to_camera[:3, :3].double().numpy()
        expression = fit.expression.astype(np.float64).copy()
        for eye, side in enumerate(("_R", "_L")):
            centre = self._eye_centre[eye] + (shift[eye] if len(shift) else 0.0)

            # Where the camera ray through the iris centre meets the eyeball (the cornea-apex sphere about the
            # eye's centre), nearest the camera; a ray that misses takes the sphere point closest to it.
            eye_world = (centre - self.pivot) @ head_rot.T + self.pivot + fit.translation
            radius = float(np.linalg.norm(self._eye_gaze[eye]))
            ray = np.array([(iris[eye, 0] - cx) / camera.fx, (iris[eye, 1] - cy) / camera.fy, 1.0])
            ray = camera_axes.T @ ray / np.linalg.norm(ray)  # camera axes → world axes
            along = float(ray @ eye_world)
            reach = along**2 - float(eye_world @ eye_world) + radius**2
            hit = (along - math.sqrt(reach)) * ray if reach > 0 else along * ray
            direction = head_rot.T @ (hit - eye_world)  # in the head frame
            direction *= radius / max(float(np.linalg.norm(direction)), 1e-9)
            # Solve Ry(yaw) · Rx(pitch) · g = direction for the rest gaze vector g.
            g = self._eye_gaze[eye]
            amplitude = math.hypot(g[1], g[2])
            pitch = math.acos(float(np.clip(direction[1] / amplitude, -1.0, 1.0))) - math.atan2(g[2], g[1])
            pitch = math.remainder(pitch, 2 * math.pi)
            turned = np.array(
                [
                    g[0],
                    g[1] * math.cos(pitch) - g[2] * math.sin(pitch),
                    g[1] * math.sin(pitch) + g[2] * math.cos(pitch),
                ]
            )
            yaw = math.atan2(direction[0], direction[2]) - math.atan2(turned[0], turned[2])
            angles = np.clip([math.remainder(yaw, 2 * math.pi), pitch], -0.8, 0.8)
            yaw, pitch = angles / EYE_LOOK_RANGE_RAD
            # Looking out turns the left eye towards +x (positive yaw) and the right eye towards −x.
            out = yaw if side == "_L" else -yaw
            for name, value in (
                ("eyeLookOut", out),
                ("eyeLookIn", -out),
                ("eyeLookDown", pitch),
                ("eyeLookUp", -pitch),
            ):
                expression[EXPRESSION_INDEX[name + side]] = np.clip(value, 0.0, 1.0)
        return expression.astype(np.float32)

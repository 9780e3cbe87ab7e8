"""Which point of the ICT head each face landmark is: per landmark scheme, a fixed landmark → ICT triangle
and barycentric map.

- 'mediapipe468': the MediaPipe face mesh, via `weights/ict_mediapipe_correspondence.npz` (computed once
  from the two canonical meshes by `weights/build_correspondence.py`); some of the 468 points have none.
- 'ibug68': the 68 Multi-PIE/iBUG points of face-alignment and dlib, which are ICT's own landmark vertices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from models.errors import HeadsplatError
from models.face_tracker import LEFT_EYE_OUTER, NUM_LANDMARKS, RIGHT_EYE_OUTER
from models.head_model import HeadModel

CORRESPONDENCE = Path(__file__).resolve().parents[1] / "weights" / "ict_mediapipe_correspondence.npz"
_LIP_AND_EYE_CONTOURS = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
)  # fmt: skip
#: Landmark schemes: (number of points, (right, left) outer eye corners, lip/eye contour points, jaw line).
LANDMARK_SCHEMES = {
    "mediapipe468": (NUM_LANDMARKS, (RIGHT_EYE_OUTER, LEFT_EYE_OUTER), _LIP_AND_EYE_CONTOURS, ()),
    "ibug68": (68, (36, 45), tuple(range(36, 68)), tuple(range(17))),
}


@dataclass
class LandmarkCorrespondence:
    """The ICT surface points of one landmark scheme's landmarks (those that have one)."""

    scheme: str  # a key of LANDMARK_SCHEMES
    landmark_index: np.ndarray  # [M] int64 rows of the landmark array that have an ICT point
    triangle: np.ndarray  # [M, 3] int64 ICT vertices of each point's triangle
    barycentric: np.ndarray  # [M, 3] float64 weights of those vertices

    @property
    def num_landmarks(self) -> int:
        """Rows of a landmark array of this scheme (468 or 68)."""
        return LANDMARK_SCHEMES[self.scheme][0]

    @property
    def eye_corners(self) -> tuple[int, int]:
        """Landmark rows of the outer eye corners (subject's right, left): the inter-ocular distance."""
        return LANDMARK_SCHEMES[self.scheme][1]

    @property
    def contours(self) -> tuple[int, ...]:
        """Landmark rows on the lip and eyelid contours (they carry mouth and blink)."""
        return LANDMARK_SCHEMES[self.scheme][2]

    @property
    def silhouette(self) -> tuple[int, ...]:
        """Landmark rows on the jaw line, which follow the visible outline rather than fixed skin points."""
        return LANDMARK_SCHEMES[self.scheme][3]

    @classmethod
    def load(cls, scheme: str, head: HeadModel, path: Path | str = CORRESPONDENCE) -> LandmarkCorrespondence:
        """The correspondence of `scheme`; 'mediapipe468' reads `path`, 'ibug68' uses `head`'s landmarks."""
        if scheme not in LANDMARK_SCHEMES:
            raise HeadsplatError(
                f"unknown landmark scheme {scheme!r}; use one of {', '.join(LANDMARK_SCHEMES)}"
            )
        if scheme == "ibug68":
            triangle = np.repeat(head.landmarks68.numpy().astype(np.int64)[:, None], 3, axis=1)
            return cls(scheme, np.arange(68), triangle, np.tile([1.0, 0.0, 0.0], (68, 1)))
        try:
            with np.load(path) as data:
                return cls(
                    scheme,
                    data["mediapipe_index"].astype(np.int64),
                    data["triangle"].astype(np.int64),
                    data["barycentric"].astype(np.float64),
                )
        except FileNotFoundError as err:
            raise HeadsplatError(
                f"correspondence file missing: {path}; run python weights/build_correspondence.py"
            ) from err

    def points(self, vertices: Tensor) -> np.ndarray:  # [N, V, 3] → [N, M, 3] float64
        """The landmark points on meshes (or on flattened bases [N, V*3]) as float64 numpy."""
        verts = vertices.reshape(len(vertices), -1, 3)[:, self.triangle].double().numpy()  # [N, M, 3, 3]
        return np.einsum("nmkc,mk->nmc", verts, self.barycentric)

"""The portrait every generator starts from: the shipped default, the photo, and the ICT head fitted to it."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

from models.errors import HeadsplatError
from pipelines.files import require_file
from pipelines.image_io import DEFAULT_MAX_SIDE, load_image

DEFAULT_PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "defaults" / "portrait.jpg"


def load_portrait(path: str | os.PathLike, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """The photo [H, W, 3] uint8, downscaled as it is decoded when a side is longer than `max_side` pixels."""
    return load_image(require_file(path, "portrait"), max_side=max_side)


def fit_portrait(image: np.ndarray, face_index: int = 0):  # image: [H, W, 3] uint8
    """Detect the faces and fit the ICT head to the `face_index`-th largest; returns its `FaceFit`."""
    from models.face_tracker import FaceTracker
    from models.fitting import FaceFitter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        faces = FaceTracker().faces(image)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if not faces:
        raise HeadsplatError("no face found in the portrait: use a photo where one face is clearly visible")
    if not 0 <= face_index < len(faces):
        raise HeadsplatError(f"--face-index {face_index} asked for, but the photo has {len(faces)} face(s)")
    if len(faces) > 1 and face_index == 0:
        print(
            f"note: {len(faces)} faces found; animating the largest (pick another with --face-index)",
            file=sys.stderr,
        )
    marks = faces[face_index]
    return FaceFitter().fit_image(marks.points, (image.shape[1], image.shape[0]))

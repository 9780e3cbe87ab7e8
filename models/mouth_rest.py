"""How the mouth rests in silence: the photo's own expression, or the same face with its lips closed.

A portrait's fitted expression holds both what the face does (a smile, raised brows) and, for a photo
caught mid-word, how far the mouth happened to be open. Motion is added on top of the face at rest, so a
mouth that was open in the photo would stay open through every pause. The rest for silence therefore
drops the shapes that open the mouth when the photo caught it open (`models.portrait_build.PhotoMouth`
decides: parted lips that show more dark mouth than teeth), and keeps the photo's mouth when it is
closed or smiling:

- ``auto``: close an open-mouth photo's lips in silence; keep a closed or smiling mouth as it is;
- ``photo``: always keep the photo's mouth (its open mouth too);
- ``closed``: always close the lips, a smile with parted lips too (the smile itself stays).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.errors import HeadsplatError
from models.latent import EXPRESSION_NAMES

if TYPE_CHECKING:
    from torch import Tensor

SILENT_MOUTHS = ("auto", "photo", "closed")

#: The expression shapes that open the mouth (part the lips or drop the jaw); a closed rest has none of them.
OPENING_SHAPES = (
    "jawOpen", "jawForward", "jawLeft", "jawRight", "mouthClose", "mouthFunnel",
    "mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L", "mouthUpperUp_R",
    "mouthStretch_L", "mouthStretch_R", "mouthShrugUpper",
)  # fmt: skip
_OPENING = [EXPRESSION_NAMES.index(n) for n in OPENING_SHAPES]


def check_silent_mouth(mode: str) -> None:
    if mode not in SILENT_MOUTHS:
        raise HeadsplatError(f"unknown silent mouth {mode!r}; choose one of {', '.join(SILENT_MOUTHS)}")


def silent_expression(rest: Tensor, mode: str, photo_mouth_open: bool) -> Tensor:
    """The expression [..., 53] the face rests in for `mode` (see the module docstring), from the
    photo's fitted one `rest` [..., 53]."""
    check_silent_mouth(mode)
    if mode == "photo" or (mode == "auto" and not photo_mouth_open):
        return rest
    closed = rest.clone()
    closed[..., _OPENING] = 0.0
    return closed


#: How long a video takes to ease from the photo's own mouth into the silent rest, seconds.
EASE_SECONDS = 0.4


def ease_from_photo(expression: np.ndarray, offset: np.ndarray, fps: float, start: int = 0) -> np.ndarray:
    """Motion expressions [T, 53] that start on the photo's own face and ease into the silent rest over
    EASE_SECONDS: `offset` [53] (the photo's expression over the silent one) is added in full to the first
    frame and faded out with a smoothstep, so the first frame is the photo and nothing jumps. `start`: the
    first row's frame number, for a motion that arrives in chunks (a live session)."""
    frames = len(expression)
    t = np.clip((start + np.arange(frames)) / max(EASE_SECONDS * fps, 1.0), 0.0, 1.0)
    weight = 1.0 - t * t * (3.0 - 2.0 * t)
    return np.clip(expression + weight[:, None] * np.asarray(offset, np.float32)[None], 0.0, 1.0).astype(
        np.float32
    )

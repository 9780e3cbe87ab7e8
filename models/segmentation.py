"""The person's matte: MediaPipe's selfie segmentation (weights/mediapipe/selfie_segmentation.tflite).

The model takes a 256 × 256 RGB image in [0, 1] and gives each pixel the probability that it shows the
person, hair, hats and glasses included. The portrait avatar uses it to tell hair from background around
the fitted head (models.portrait_turns.hair_shell), so the hair turns with the head and the background
behind it is inpainted rather than dragged along.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from models.face_tracker import WEIGHTS_DIR, _load_interpreter

MODEL_FILE = "selfie_segmentation.tflite"
INPUT_SIZE = 256

_LOCAL = threading.local()  # an Interpreter is not thread-safe: one per thread


def _interpreter():
    interpreter = getattr(_LOCAL, "interpreter", None)
    if interpreter is None:
        interpreter = _load_interpreter(WEIGHTS_DIR / MODEL_FILE, num_threads=2)
        _LOCAL.interpreter = interpreter
    return interpreter


def person_matte(image: np.ndarray) -> np.ndarray:
    """Person probability [H, W] float32 in [0, 1] of an RGB image [H, W, 3] (uint8, or float in [0, 1]).

    The image is padded to a square with its edge pixels (the model was trained on square selfies; a
    squashed face segments worse), scaled to the model's input, and the output scaled back.
    """
    rgb = np.asarray(image)
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    height, width = rgb.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = cv2.copyMakeBorder(
        np.ascontiguousarray(rgb, np.float32), top, side - height - top, left, side - width - left,
        cv2.BORDER_REPLICATE,
    )  # fmt: skip
    small = cv2.resize(square, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
    interpreter = _interpreter()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.clip(small, 0, 1)[None])
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0, :, :, 0]
    full = cv2.resize(out.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    return np.clip(full[top : top + height, left : left + width], 0.0, 1.0)

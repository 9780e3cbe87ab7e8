"""The shared identity and motion latents: who a head is, and how it moves.

A `Motion` made by any source (audio diffusion, video tracking, an iPhone's Live Link Face CSV) drives any
avatar. Expressions use ICT-FaceKit's 53 ARKit-named blendshapes (`browInnerUp` and `cheekPuff` are split
per side); rotations are radians (pitch, yaw, roll) relative to the rest pose; translations are cm.

This module converts between in-memory objects and plain tables/dicts; reading and writing files is
done by `pipelines.motion_io`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from models.errors import HeadsplatError

#: ICT-FaceKit expression order (the head model's blendshape order).
EXPRESSION_NAMES: tuple[str, ...] = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R",
    "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R",
    "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L",
    "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)  # fmt: skip
NUM_EXPRESSIONS = len(EXPRESSION_NAMES)
EXPRESSION_INDEX = {name: i for i, name in enumerate(EXPRESSION_NAMES)}

#: The 52 ARKit blendshapes in the column order of Live Link Face CSV files.
ARKIT_NAMES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
    "EyeSquintLeft", "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight",
    "EyeLookOutRight", "EyeLookUpRight", "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight",
    "JawLeft", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft",
    "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft",
    "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight", "MouthRollLower", "MouthRollUpper",
    "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft",
    "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight",
    "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)  # fmt: skip
#: Live Link Face's trailing pose columns (radians).
ARKIT_POSE_COLUMNS: tuple[str, ...] = (
    "HeadYaw", "HeadPitch", "HeadRoll",
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)  # fmt: skip
#: headsplat's optional extension columns (cm); Live Link Face itself records no head translation.
TRANSLATION_COLUMNS: tuple[str, ...] = ("HeadTranslationX", "HeadTranslationY", "HeadTranslationZ")

#: The ICT shapes that ARKit keeps as one (merged by averaging, split by copying).
SPLIT_PAIRS: dict[str, tuple[str, str]] = {
    "BrowInnerUp": ("browInnerUp_L", "browInnerUp_R"),
    "CheekPuff": ("cheekPuff_L", "cheekPuff_R"),
}

#: How far (radians) an eyeLook* shape at 1.0 turns the eye; used to fill Live Link Face's eye columns.
EYE_LOOK_RANGE_RAD = math.radians(30.0)


def _arkit_to_ict_name(arkit: str) -> str | None:
    """ICT name of one ARKit column, None for shapes ICT lacks (TongueOut) or splits."""
    if arkit in SPLIT_PAIRS or arkit == "TongueOut":
        return None
    name = arkit[0].lower() + arkit[1:]
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        # "JawLeft"/"MouthLeft" are directions, not sides: they have no _L/_R twin in ICT.
        if name.endswith(side) and name not in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):
            name = name[: -len(side)] + suffix
    assert name in EXPRESSION_INDEX, arkit
    return name


ARKIT_TO_ICT: dict[str, str | None] = {a: _arkit_to_ict_name(a) for a in ARKIT_NAMES}


def _number_array(name: str, values) -> np.ndarray:
    """`values` as float32, or a HeadsplatError when they are not numbers (strings, objects, ragged lists)."""
    try:
        return np.asarray(values, np.float32)
    except (TypeError, ValueError) as err:
        raise HeadsplatError(f"{name} must be numbers ({err})") from err


def _frame_rate(value) -> float:
    """A motion's fps as a float: one real number (a 0-d or 1-element array counts), not a string or a list."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        array = None
    if array is None or array.size != 1 or array.dtype.kind not in "iuf":
        if isinstance(value, np.ndarray):
            shown = f"an array of shape {list(value.shape)} and type {value.dtype}"
        else:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise HeadsplatError(f"motion fps must be one number (frames per second), got {shown}")
    fps = float(array.reshape(()))
    if not (math.isfinite(fps) and fps > 0):
        raise HeadsplatError(f"motion fps must be a positive number, got {fps}")
    return fps


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise HeadsplatError(f"{name} has NaN or infinite values (first at row {bad})")


@dataclass
class Identity:
    """Who a head is: ICT identity coefficients plus the rest pose and camera of its source portrait.

    Appearance (colours, Gaussians) lives in the avatar, not here.
    """

    coefficients: np.ndarray  # [K] ICT identity PCA coefficients, ~N(0, 1), K <= 100
    rotation: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))  # [3] rest pose, radians
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))  # [3] rest pose, cm
    focal_px: float = 0.0  # focal length of the portrait camera in pixels (0: unknown)
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the portrait in pixels (0: unknown)

    def __post_init__(self) -> None:
        self.coefficients = np.asarray(self.coefficients, np.float32).reshape(-1)
        self.rotation = np.asarray(self.rotation, np.float32).reshape(-1)
        self.translation = np.asarray(self.translation, np.float32).reshape(-1)
        if self.coefficients.shape[0] > 100:
            raise HeadsplatError(f"identity has {self.coefficients.shape[0]} coefficients; ICT has 100")
        if self.rotation.shape != (3,) or self.translation.shape != (3,):
            raise HeadsplatError("identity rest pose needs 3 rotation and 3 translation values")
        for name in ("coefficients", "rotation", "translation"):
            _check_finite(f"identity {name}", getattr(self, name))
        self.focal_px = float(self.focal_px)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    @classmethod
    def neutral(cls, num_coefficients: int = 50) -> Identity:
        """The mean ICT head."""
        return cls(np.zeros(num_coefficients, np.float32))

    def to_dict(self) -> dict:
        return {
            "coefficients": self.coefficients.tolist(),
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "focal_px": self.focal_px,
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Identity:
        try:
            return cls(
                np.asarray(data["coefficients"], np.float32),
                np.asarray(data.get("rotation", [0, 0, 0]), np.float32),
                np.asarray(data.get("translation", [0, 0, 0]), np.float32),
                float(data.get("focal_px", 0.0)),
                tuple(data.get("image_size", (0, 0))),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise HeadsplatError(f"not a valid identity: {err}") from err


@dataclass
class Motion:
    """How a head moves: T frames at `fps` of expression weights and head pose."""

    expression: np.ndarray  # [T, 53] ICT blendshape weights in [0, 1]
    rotation: np.ndarray  # [T, 3] pitch, yaw, roll in radians, relative to the rest pose
    translation: np.ndarray  # [T, 3] cm, relative to the rest pose
    fps: float = 25.0  # frames per second

    def __post_init__(self) -> None:
        self.expression = _number_array("motion expression", self.expression)
        self.rotation = _number_array("motion rotation", self.rotation)
        self.translation = _number_array("motion translation", self.translation)
        self.fps = _frame_rate(self.fps)
        if self.expression.ndim != 2 or self.expression.shape[1] != NUM_EXPRESSIONS:
            raise HeadsplatError(
                f"motion expression must be [T, {NUM_EXPRESSIONS}], got {list(self.expression.shape)}"
            )
        frames = self.expression.shape[0]
        for name in ("rotation", "translation"):
            shape = getattr(self, name).shape
            if shape != (frames, 3):
                raise HeadsplatError(
                    f"motion {name} must be [{frames}, 3] to match expression, got {list(shape)}"
                )
        for name in ("expression", "rotation", "translation"):
            _check_finite(f"motion {name}", getattr(self, name))
        lo, hi = float(self.expression.min(initial=0.0)), float(self.expression.max(initial=0.0))
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise HeadsplatError(f"motion expression weights must lie in [0, 1], found [{lo:.3f}, {hi:.3f}]")
        self.expression = np.clip(self.expression, 0.0, 1.0)

    # ----------------------------------------------------------------------------------------------
    # Construction and basic operations
    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])

    def __len__(self) -> int:
        return self.num_frames

    @property
    def duration(self) -> float:
        """Seconds covered by the frames (T / fps)."""
        return self.num_frames / self.fps

    @classmethod
    def neutral(cls, num_frames: int, fps: float = 25.0) -> Motion:
        """A still, neutral head for `num_frames` frames."""
        return cls(
            np.zeros((num_frames, NUM_EXPRESSIONS), np.float32),
            np.zeros((num_frames, 3), np.float32),
            np.zeros((num_frames, 3), np.float32),
            fps,
        )

    @classmethod
    def idle(cls, num_frames: int, fps: float = 25.0, seed: int = 0) -> Motion:
        """A living still: blinks every 2-6 s, slow breathing sway, tiny gaze drift; mouth closed."""
        rng = np.random.default_rng(seed)
        motion = cls.neutral(num_frames, fps)
        if num_frames == 0:
            return motion
        t = np.arange(num_frames) / fps
        # Blinks: ~100 ms close, ~150 ms open, spaced 2-6 s apart (adult resting blink rate ~15/min).
        blink = np.zeros(num_frames, np.float32)
        start = rng.uniform(0.5, 2.5)
        while start < t[-1]:
            rise = np.clip((t - start) / 0.1, 0, 1)
            fall = np.clip(1 - (t - start - 0.1) / 0.15, 0, 1)
            blink = np.maximum(blink, np.where(t < start + 0.1, rise, fall) * (t >= start))
            start += rng.uniform(2.0, 6.0)
        for name in ("eyeBlink_L", "eyeBlink_R"):
            motion.expression[:, EXPRESSION_INDEX[name]] = blink
        phase = rng.uniform(0, 2 * np.pi, size=4)
        breathing = np.sin(2 * np.pi * 0.25 * t + phase[0])  # ~15 breaths per minute
        motion.rotation[:, 0] = np.radians(0.6) * breathing
        motion.rotation[:, 1] = np.radians(1.0) * np.sin(2 * np.pi * 0.07 * t + phase[1])
        motion.rotation[:, 2] = np.radians(0.5) * np.sin(2 * np.pi * 0.05 * t + phase[2])
        motion.translation[:, 1] = 0.05 * breathing
        drift = 0.08 * np.sin(2 * np.pi * 0.11 * t + phase[3])
        for side in ("_L", "_R"):
            out = "eyeLookOut" + side if side == "_L" else "eyeLookIn" + side
            into = "eyeLookIn" + side if side == "_L" else "eyeLookOut" + side
            motion.expression[:, EXPRESSION_INDEX[out]] = np.clip(drift, 0, 1)
            motion.expression[:, EXPRESSION_INDEX[into]] = np.clip(-drift, 0, 1)
        return motion

    def slice(self, start: int, stop: int | None = None) -> Motion:
        """Frames [start, stop) as a new motion."""
        sel = slice(start, stop)
        return Motion(
            self.expression[sel].copy(), self.rotation[sel].copy(), self.translation[sel].copy(), self.fps
        )

    def slice_seconds(self, start: float, stop: float | None = None) -> Motion:
        """The frames between `start` and `stop` seconds."""
        return self.slice(round(start * self.fps), None if stop is None else round(stop * self.fps))

    @staticmethod
    def concatenate(motions: list[Motion]) -> Motion:
        """Motions one after another; all must share one fps."""
        if not motions:
            raise HeadsplatError("nothing to concatenate")
        fps = motions[0].fps
        if any(abs(m.fps - fps) > 1e-6 for m in motions):
            raise HeadsplatError("motions to concatenate have different fps; resample them first")
        return Motion(
            np.concatenate([m.expression for m in motions]),
            np.concatenate([m.rotation for m in motions]),
            np.concatenate([m.translation for m in motions]),
            fps,
        )

    def resample(self, fps: float, num_frames: int | None = None) -> Motion:
        """The same movement at another frame rate (linear interpolation in time).

        Frame i sits at time i / fps; the result covers the same duration unless `num_frames` is given.
        """
        if not (fps > 0 and math.isfinite(fps)):
            raise HeadsplatError(f"fps must be positive, got {fps}")
        if num_frames is None:
            num_frames = max(1, round(self.duration * fps)) if self.num_frames else 0
        if self.num_frames == 0 or num_frames == 0:
            return Motion.neutral(num_frames, fps)
        src = np.arange(self.num_frames) / self.fps
        dst = np.arange(num_frames) / fps

        def interp(values: np.ndarray) -> np.ndarray:
            return np.stack([np.interp(dst, src, values[:, c]) for c in range(values.shape[1])], axis=1)

        return Motion(interp(self.expression), interp(self.rotation), interp(self.translation), fps)

    def blend(self, other: Motion, weight: float | np.ndarray) -> Motion:
        """(1 - weight) * self + weight * other, frame by frame; `weight` is a scalar or [T]."""
        if other.num_frames != self.num_frames or abs(other.fps - self.fps) > 1e-6:
            raise HeadsplatError(
                f"cannot blend {self.num_frames} frames at {self.fps} fps with "
                f"{other.num_frames} frames at {other.fps} fps; resample or slice first"
            )
        w = np.asarray(weight, np.float32)
        if w.ndim == 1:
            if w.shape[0] != self.num_frames:
                raise HeadsplatError("per-frame blend weights must have one value per frame")
            w = w[:, None]
        return Motion(
            (1 - w) * self.expression + w * other.expression,
            (1 - w) * self.rotation + w * other.rotation,
            (1 - w) * self.translation + w * other.translation,
            self.fps,
        )

    def scaled(self, expression_scale: float = 1.0, pose_scale: float = 1.0) -> Motion:
        """Exaggerate or damp: expressions times `expression_scale` (clipped to [0, 1]), pose times `pose_scale`."""
        return Motion(
            np.clip(self.expression * expression_scale, 0, 1),
            self.rotation * pose_scale,
            self.translation * pose_scale,
            self.fps,
        )

    def __getitem__(self, name: str) -> np.ndarray:
        """One expression curve [T] by ICT name, e.g. motion["jawOpen"]."""
        if name not in EXPRESSION_INDEX:
            raise KeyError(f"unknown expression {name!r}")
        return self.expression[:, EXPRESSION_INDEX[name]]

    # ----------------------------------------------------------------------------------------------
    # Plain-data forms (files are read and written by pipelines.motion_io)
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for an .npz file."""
        return {
            "expression": self.expression,
            "rotation": self.rotation,
            "translation": self.translation,
            "fps": np.float64(self.fps),
            "expression_names": np.array(EXPRESSION_NAMES),
        }

    @classmethod
    def from_arrays(cls, arrays) -> Motion:
        """Inverse of `to_arrays`; accepts an opened .npz."""
        missing = [k for k in ("expression", "rotation", "translation", "fps") if k not in arrays]
        if missing:
            raise HeadsplatError(f"motion file lacks {', '.join(missing)}")
        if "expression_names" in arrays:
            names = np.atleast_1d(arrays["expression_names"])
            if tuple(str(n) for n in names) != EXPRESSION_NAMES:
                raise HeadsplatError(
                    "motion file's expression names are not ICT-FaceKit's 53 shapes in order"
                )
        # fps goes in as stored: the constructor refuses anything but one number.
        return cls(arrays["expression"], arrays["rotation"], arrays["translation"], arrays["fps"])

    def to_dict(self) -> dict:
        """A JSON-ready dict: per-frame lists plus the expression names."""
        return {
            "format": "headsplat.motion",
            "version": 1,
            "fps": self.fps,
            "expression_names": list(EXPRESSION_NAMES),
            "expression": self.expression.tolist(),
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Motion:
        if not isinstance(data, dict) or data.get("format") != "headsplat.motion":
            raise HeadsplatError(
                "not a headsplat motion (expected a JSON object with format 'headsplat.motion')"
            )
        names = data.get("expression_names", list(EXPRESSION_NAMES))
        if not isinstance(names, list) or names != list(EXPRESSION_NAMES):
            raise HeadsplatError("motion JSON's expression names are not ICT-FaceKit's 53 shapes in order")
        try:
            expression = np.asarray(data["expression"], np.float32).reshape(-1, NUM_EXPRESSIONS)
            frames = expression.shape[0]
            rotation = np.asarray(data["rotation"], np.float32).reshape(frames, 3)
            translation = np.asarray(data["translation"], np.float32).reshape(frames, 3)
        except KeyError as err:
            raise HeadsplatError(f"motion JSON lacks {err.args[0]!r}") from err
        except (TypeError, ValueError) as err:
            raise HeadsplatError(f"motion JSON has arrays of the wrong shape: {err}") from err
        # fps goes in as written: the constructor refuses a string, a list or a bool.
        return cls(expression, rotation, translation, data.get("fps", 25.0))

    # ----------------------------------------------------------------------------------------------
    # ARKit-52 (Live Link Face) tables
    def to_arkit_table(self, include_translation: bool = True) -> tuple[list[str], np.ndarray]:
        """Columns and values [T, C] in the Live Link Face layout, without Timecode/BlendShapeCount.

        The split ICT pairs are merged by averaging (the one lossy step); TongueOut is 0; eye angles
        are derived from the eyeLook* shapes. Translation goes into headsplat's extension columns.
        """
        frames = self.num_frames
        columns = list(ARKIT_NAMES) + list(ARKIT_POSE_COLUMNS)
        table = np.zeros((frames, len(columns)), np.float64)
        for j, arkit in enumerate(ARKIT_NAMES):
            if arkit in SPLIT_PAIRS:
                left, right = SPLIT_PAIRS[arkit]
                table[:, j] = 0.5 * (self[left] + self[right])
            elif ARKIT_TO_ICT[arkit] is not None:
                table[:, j] = self[ARKIT_TO_ICT[arkit]]
        base = len(ARKIT_NAMES)
        pitch, yaw, roll = self.rotation[:, 0], self.rotation[:, 1], self.rotation[:, 2]
        table[:, base + 0], table[:, base + 1], table[:, base + 2] = yaw, pitch, roll
        for k, side in enumerate(("_L", "_R")):
            # Subject's left eye looks out = towards the subject's left = positive yaw.
            out_dir = self["eyeLookOut" + side] - self["eyeLookIn" + side]
            eye_yaw = out_dir if side == "_L" else -out_dir
            eye_pitch = self["eyeLookDown" + side] - self["eyeLookUp" + side]
            table[:, base + 3 + 3 * k] = EYE_LOOK_RANGE_RAD * eye_yaw
            table[:, base + 4 + 3 * k] = EYE_LOOK_RANGE_RAD * eye_pitch
        if include_translation:
            columns += list(TRANSLATION_COLUMNS)
            table = np.concatenate([table, self.translation.astype(np.float64)], axis=1)
        return columns, table

    @classmethod
    def from_arkit_table(cls, columns: list[str], table: np.ndarray, fps: float) -> Motion:
        """Inverse of `to_arkit_table`. Columns are matched case-insensitively; unknown columns are errors.

        Merged ARKit shapes are copied to both ICT sides; TongueOut and the eye angles are ignored
        (gaze lives in the eyeLook* shapes); missing blendshape columns read as 0.
        """
        known = {c.lower(): c for c in (*ARKIT_NAMES, *ARKIT_POSE_COLUMNS, *TRANSLATION_COLUMNS)}
        canonical = []
        for col in columns:
            key = col.strip().lower()
            if key not in known:
                raise HeadsplatError(f"unknown ARKit CSV column {col!r}")
            canonical.append(known[key])
        duplicates = {c for c in canonical if canonical.count(c) > 1}
        if duplicates:
            raise HeadsplatError(f"ARKit CSV repeats column(s) {', '.join(sorted(duplicates))}")
        if not any(c in ARKIT_NAMES for c in canonical):
            raise HeadsplatError("ARKit CSV has none of the 52 blendshape columns")
        table = np.asarray(table, np.float64)
        frames = table.shape[0]
        col = {name: table[:, i] for i, name in enumerate(canonical)}
        expression = np.zeros((frames, NUM_EXPRESSIONS), np.float32)
        for arkit in ARKIT_NAMES:
            if arkit not in col:
                continue
            if arkit in SPLIT_PAIRS:
                for ict in SPLIT_PAIRS[arkit]:
                    expression[:, EXPRESSION_INDEX[ict]] = col[arkit]
            elif ARKIT_TO_ICT[arkit] is not None:
                expression[:, EXPRESSION_INDEX[ARKIT_TO_ICT[arkit]]] = col[arkit]
        zero = np.zeros(frames)
        rotation = np.stack(
            [col.get("HeadPitch", zero), col.get("HeadYaw", zero), col.get("HeadRoll", zero)], 1
        )
        translation = np.stack([col.get(c, zero) for c in TRANSLATION_COLUMNS], 1)
        _check_finite("ARKit CSV values", table)
        # Live Link Face writes tiny negative and >1 values from its solver; clamp rather than refuse.
        return cls(np.clip(expression, 0, 1), rotation, translation, fps)


# --------------------------------------------------------------------------------------------------
# Live Link Face timecodes
_TIMECODE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[:;](\d+)(?:\.(\d+))?\s*$")
STANDARD_RATES = (24.0, 25.0, 30.0, 48.0, 50.0, 60.0, 120.0)


def parse_timecode(text: str) -> tuple[int, float]:
    """`HH:MM:SS:FF.sub` → (whole seconds, frame number with its sub-frame fraction)."""
    match = _TIMECODE.match(text)
    if not match:
        raise HeadsplatError(f"bad Live Link Face timecode {text!r} (expected HH:MM:SS:FF.sss)")
    h, m, s, frame, sub = match.groups()
    seconds = int(h) * 3600 + int(m) * 60 + int(s)
    return seconds, int(frame) + (float("0." + sub) if sub else 0.0)


def format_timecode(time_s: float, fps: float) -> str:
    """Seconds → `HH:MM:SS:FF.sss` with frames counted at `fps`."""
    whole = math.floor(time_s + 1e-9)
    frame = round((time_s - whole) * fps, 3)  # thousandths of a frame, as Live Link Face writes them
    if frame >= fps:  # rounding pushed it into the next second
        whole, frame = whole + 1, 0.0
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{int(frame):02d}.{round((frame - int(frame)) * 1000) % 1000:03d}"


def timecodes_to_seconds(timecodes: list[str], fps: float | None = None) -> tuple[np.ndarray, float]:
    """Times in seconds (relative to the first row) and the timecode frame rate.

    Without `fps`, the rate is read off the data: the smallest standard rate above the largest frame
    field seen (Live Link Face's default is 60 when a clip is too short to tell).
    """
    parsed = [parse_timecode(t) for t in timecodes]
    if fps is None:
        max_frame = max(f for _, f in parsed)
        spans_second = len({s for s, _ in parsed}) > 1
        fps = next((r for r in STANDARD_RATES if r > max_frame), None) if spans_second else 60.0
        if fps is None or max_frame >= fps:
            fps = float(math.floor(max_frame) + 1)
    times = np.array([s + f / fps for s, f in parsed])
    times -= times[0]
    steps = np.diff(times)
    if np.any(steps <= 0):
        bad = int(np.argmax(steps <= 0)) + 1
        raise HeadsplatError(
            f"timecodes are not increasing at row {bad + 1} ({timecodes[bad - 1]} then {timecodes[bad]})"
        )
    return times, float(fps)

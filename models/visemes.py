"""The teacher: timed phones (+ prosody) → a `Motion` by rule, used to label synthetic speech and as a fallback.

Mouth shapes follow Cohen & Massaro's coarticulation model (1993): every phone has a target value and a
dominance function per facial channel, and a channel's value at time t is the dominance-weighted mean of
the targets of all phones around t. Phones that must reach their target (lip closure for p/b/m, the
lower-lip tuck for f/v, rounding for w/uw) have high, sharp dominance; phones that do not care about a
channel (k, h for the lips) have low dominance there, so their neighbours' shapes carry through them.

Blinks, gaze and head motion are procedural and seeded: the lips depend only on the phones, everything
else also on the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from models.audio import VOWELS, Phone
from models.controls import EMOTIONS
from models.errors import HeadsplatError
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS, Motion

#: Facial channels the phones drive (mirrored pairs are driven together).
LIP_CHANNELS: tuple[str, ...] = (
    "jawOpen", "mouthClose", "mouthPress", "mouthFunnel", "mouthPucker", "mouthStretch", "mouthSmile",
    "mouthRollLower", "mouthRollUpper", "mouthUpperUp", "mouthLowerDown", "mouthShrugUpper", "jawForward",
)  # fmt: skip
_CHANNEL_SHAPES = {c: (c + "_L", c + "_R") if c + "_L" in EXPRESSION_INDEX else (c,) for c in LIP_CHANNELS}

# Targets per phone: {channel: value}. Channels not named have target 0 but low dominance (see below).
_T = dict
PHONE_TARGETS: dict[str, dict[str, float]] = {
    # Vowels: jaw height, lip spreading or rounding.
    "AA": _T(jawOpen=0.55, mouthLowerDown=0.30, mouthUpperUp=0.10),
    "AE": _T(jawOpen=0.45, mouthStretch=0.25, mouthLowerDown=0.30, mouthUpperUp=0.15),
    "AH": _T(jawOpen=0.38, mouthLowerDown=0.20),
    "AO": _T(jawOpen=0.45, mouthFunnel=0.35, mouthPucker=0.10, mouthLowerDown=0.15),
    "EH": _T(jawOpen=0.32, mouthStretch=0.25, mouthLowerDown=0.20, mouthUpperUp=0.05),
    "ER": _T(jawOpen=0.20, mouthFunnel=0.35, mouthPucker=0.15),
    "IH": _T(jawOpen=0.22, mouthStretch=0.30, mouthSmile=0.10),
    "IY": _T(jawOpen=0.14, mouthStretch=0.40, mouthSmile=0.25),
    "UH": _T(jawOpen=0.22, mouthFunnel=0.30, mouthPucker=0.35),
    "UW": _T(jawOpen=0.14, mouthFunnel=0.35, mouthPucker=0.65),
    # Bilabials: lips closed while the jaw sits slightly open (mouthClose cancels jawOpen at the lips).
    "P": _T(jawOpen=0.06, mouthClose=0.06, mouthPress=0.40, mouthRollLower=0.10, mouthRollUpper=0.05),
    "B": _T(jawOpen=0.06, mouthClose=0.06, mouthPress=0.35, mouthRollLower=0.10, mouthRollUpper=0.05),
    "M": _T(jawOpen=0.05, mouthClose=0.05, mouthPress=0.25, mouthRollLower=0.05),
    # Labiodentals: the lower lip tucks under the upper teeth.
    "F": _T(jawOpen=0.08, mouthRollLower=0.55, mouthUpperUp=0.25, mouthShrugUpper=0.10),
    "V": _T(jawOpen=0.08, mouthRollLower=0.50, mouthUpperUp=0.25, mouthShrugUpper=0.10),
    # Dental/alveolar: teeth nearly together, lips free.
    "TH": _T(jawOpen=0.14, mouthLowerDown=0.10),
    "DH": _T(jawOpen=0.14, mouthLowerDown=0.10),
    "T": _T(jawOpen=0.14),
    "D": _T(jawOpen=0.14),
    "N": _T(jawOpen=0.13),
    "L": _T(jawOpen=0.18),
    "S": _T(jawOpen=0.06, mouthStretch=0.30, mouthSmile=0.10),
    "Z": _T(jawOpen=0.06, mouthStretch=0.30, mouthSmile=0.10),
    # Post-alveolar: lips pushed out.
    "SH": _T(jawOpen=0.10, mouthFunnel=0.45, mouthPucker=0.25, mouthUpperUp=0.10, jawForward=0.10),
    "ZH": _T(jawOpen=0.10, mouthFunnel=0.45, mouthPucker=0.25, mouthUpperUp=0.10, jawForward=0.10),
    "CH": _T(jawOpen=0.10, mouthFunnel=0.40, mouthPucker=0.25, mouthUpperUp=0.10, jawForward=0.10),
    "JH": _T(jawOpen=0.10, mouthFunnel=0.40, mouthPucker=0.25, mouthUpperUp=0.10, jawForward=0.10),
    # Velars and h: the lips take their neighbours' shapes.
    "K": _T(jawOpen=0.20),
    "G": _T(jawOpen=0.20),
    "NG": _T(jawOpen=0.18),
    "HH": _T(jawOpen=0.25),
    # Approximants.
    "R": _T(jawOpen=0.16, mouthFunnel=0.30, mouthPucker=0.25),
    "W": _T(jawOpen=0.08, mouthFunnel=0.30, mouthPucker=0.75),
    "Y": _T(jawOpen=0.12, mouthStretch=0.25, mouthSmile=0.10),
    "SIL": _T(),
}
#: Diphthongs glide between two vowel targets (first part takes 60% of the time).
DIPHTHONGS: dict[str, tuple[str, str]] = {
    "AW": ("AA", "UW"), "AY": ("AA", "IY"), "EY": ("EH", "IY"), "OW": ("AO", "UW"), "OY": ("AO", "IY"),
}  # fmt: skip

_ROUNDING = ("mouthFunnel", "mouthPucker")
_SPREAD = ("mouthStretch", "mouthSmile")
_CLOSURE = ("mouthClose", "mouthPress")
_TUCK = ("mouthRollLower", "mouthUpperUp", "mouthShrugUpper")


def _dominance(label: str) -> tuple[dict[str, float], float]:
    """Per-channel dominance magnitude and the time constant (s) of its decay outside the phone."""
    base = {c: 0.15 for c in LIP_CHANNELS}  # unconstrained channels: neighbours carry through
    target = PHONE_TARGETS[label]
    if label == "SIL":
        return {c: 0.8 for c in LIP_CHANNELS}, 0.06
    if label in VOWELS:
        base["jawOpen"] = 1.2
        for c in ("mouthLowerDown", "mouthUpperUp"):
            base[c] = 0.8
        spread = any(target.get(c, 0) > 0 for c in _SPREAD)
        rounded = any(target.get(c, 0) > 0 for c in _ROUNDING)
        for c in _ROUNDING + _SPREAD:
            # Spread vowels actively unround the lips (and rounded ones unspread them).
            base[c] = (
                1.5
                if target.get(c, 0) > 0 or (c in _ROUNDING and spread) or (c in _SPREAD and rounded)
                else 0.5
            )
        return base, 0.06
    if label in ("P", "B", "M"):
        # Closure must be reached even in a 30 ms /b/ between open vowels: strong and sharp.
        for c in ("jawOpen", "mouthLowerDown", "mouthUpperUp", *_CLOSURE, "mouthRollLower", "mouthRollUpper"):
            base[c] = 10.0
        return base, 0.018
    if label in ("F", "V"):
        for c in ("jawOpen", "mouthLowerDown", *_TUCK):
            base[c] = 3.0
        return base, 0.025
    if label in ("W", "UW", "SH", "ZH", "CH", "JH", "R"):
        for c in _ROUNDING:
            base[c] = 2.0
        base["jawOpen"] = 1.0
        return base, 0.05
    if label in ("S", "Z"):
        base["jawOpen"] = 1.5
        base["mouthStretch"] = 0.5
        return base, 0.04
    if label in ("K", "G", "NG", "HH"):
        base["jawOpen"] = 0.3
        return base, 0.05
    base["jawOpen"] = 0.8
    return base, 0.04


@dataclass(frozen=True)
class _Segment:
    label: str
    start: float
    end: float


def _segments(phones: Sequence[Phone], min_plateau: float) -> list[_Segment]:
    out = []
    for p in phones:
        if p.label not in PHONE_TARGETS and p.label not in DIPHTHONGS:
            raise HeadsplatError(
                f"unknown phone {p.label!r}; phones are ARPAbet labels without stress digits"
            )
        if p.label in DIPHTHONGS:
            first, second = DIPHTHONGS[p.label]
            mid = p.start + 0.6 * (p.end - p.start)
            out += [_Segment(first, p.start, mid), _Segment(second, mid, p.end)]
        else:
            out.append(_Segment(p.label, p.start, p.end))
    # A closure shorter than a frame could fall between two frame times; widen it to one frame.
    widened = []
    for s in out:
        if s.label in ("P", "B", "M", "F", "V") and s.end - s.start < min_plateau:
            mid = 0.5 * (s.start + s.end)
            s = _Segment(s.label, mid - min_plateau / 2, mid + min_plateau / 2)
        widened.append(s)
    return widened


def viseme_curves(phones: Sequence[Phone], num_frames: int, fps: float = 25.0) -> np.ndarray:
    """Mouth and jaw expression weights [T, 53] from timed phones, with Cohen–Massaro coarticulation."""
    expression = np.zeros((num_frames, NUM_EXPRESSIONS), np.float32)
    if num_frames == 0 or not phones:
        return expression
    segments = _segments(phones, min_plateau=1.1 / fps)
    times = np.arange(num_frames) / fps
    starts = np.array([s.start for s in segments])
    ends = np.array([s.end for s in segments])
    taus = np.empty(len(segments))
    magnitudes = np.empty((len(segments), len(LIP_CHANNELS)))
    targets = np.zeros((len(segments), len(LIP_CHANNELS)))
    for i, s in enumerate(segments):
        dom, taus[i] = _dominance(s.label)
        magnitudes[i] = [dom[c] for c in LIP_CHANNELS]
        targets[i] = [PHONE_TARGETS[s.label].get(c, 0.0) for c in LIP_CHANNELS]
    # Distance outside each phone's interval (0 inside it): a plateau, then exponential decay.
    outside = np.maximum(0.0, np.maximum(starts[:, None] - times[None, :], times[None, :] - ends[:, None]))
    temporal = np.exp(-((outside / taus[:, None]) ** 1.5))  # [P, T]
    weights = magnitudes[:, :, None] * temporal[:, None, :]  # [P, C, T]
    rest = 1e-3  # far from every phone the mouth relaxes closed
    curves = (weights * targets[:, :, None]).sum(0) / (weights.sum(0) + rest)  # [C, T]
    for c, name in enumerate(LIP_CHANNELS):
        for shape in _CHANNEL_SHAPES[name]:
            expression[:, EXPRESSION_INDEX[shape]] = curves[c]
    # mouthClose only makes sense up to the jaw opening it cancels.
    jaw, close = EXPRESSION_INDEX["jawOpen"], EXPRESSION_INDEX["mouthClose"]
    expression[:, close] = np.minimum(expression[:, close], expression[:, jaw])
    return np.clip(expression, 0, 1)


def mouth_opening(expression: np.ndarray) -> np.ndarray:
    """Lip gap per frame [T] from expressions [T, 53]: jaw opening left after mouthClose, plus lip raise/lower.

    0 means lips together; open vowels reach ~0.5. Used to score lip sync (see benchmarks/lipsync.py).
    """
    e = np.asarray(expression)
    idx = EXPRESSION_INDEX
    lip = 0.25 * (
        e[:, idx["mouthLowerDown_L"]] + e[:, idx["mouthLowerDown_R"]]
        + e[:, idx["mouthUpperUp_L"]] + e[:, idx["mouthUpperUp_R"]]
    ) / 2  # fmt: skip
    press = 0.5 * (e[:, idx["mouthPress_L"]] + e[:, idx["mouthPress_R"]])
    gap = np.maximum(e[:, idx["jawOpen"]] - e[:, idx["mouthClose"]], 0) + lip - 0.2 * press
    return np.maximum(gap, 0.0)


#: A p/b/m phone counts as closed when the lip gap falls below this somewhere within it (±1 frame).
LIPS_CLOSED_BELOW = 0.08


def bilabial_closure(phones: Sequence[Phone], expression: np.ndarray, fps: float) -> tuple[int, int]:
    """(closed, total) p/b/m phones: closed when `mouth_opening` < LIPS_CLOSED_BELOW within the phone ±1 frame."""
    opening = mouth_opening(expression)
    closed = total = 0
    for p in phones:
        if p.label not in ("P", "B", "M"):
            continue
        lo = max(0, math.floor(p.start * fps) - 1)
        hi = min(len(opening), math.ceil(p.end * fps) + 2)
        if hi <= lo:
            continue
        total += 1
        closed += int(opening[lo:hi].min() < LIPS_CLOSED_BELOW)
    return closed, total


# --------------------------------------------------------------------------------------------------
# Procedural parts: blinks, gaze, brows, head motion, emotion
EMOTION_OFFSETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"mouthSmile": 0.45, "cheekSquint": 0.30, "eyeSquint": 0.15, "browOuterUp": 0.05},
    "sad": {"mouthFrown": 0.35, "browInnerUp": 0.45, "mouthShrugLower": 0.15, "eyeLookDown": 0.10},
    "angry": {"browDown": 0.55, "noseSneer": 0.25, "eyeSquint": 0.20, "jawForward": 0.05},
    "surprised": {"browInnerUp": 0.50, "browOuterUp": 0.55, "eyeWide": 0.50, "jawOpen": 0.06},
}
#: Head pitch offset per emotion (radians, positive = head tilted down).
EMOTION_PITCH = {"neutral": 0.0, "happy": -0.02, "sad": 0.07, "angry": 0.03, "surprised": -0.04}


def _shapes(name: str) -> tuple[str, ...]:
    if name in EXPRESSION_INDEX:
        return (name,)
    return (name + "_L", name + "_R")


@dataclass(frozen=True)
class TeacherConfig:
    """Strengths of the teacher's procedural motion."""

    blinks_per_minute: float = 17.0
    """Mean blink rate while talking (adults: ~15-25 per minute in conversation)."""
    head_sway_deg: float = 4.2
    """Standard deviation of the slow head sway (yaw; pitch and roll take 60% and 40% of it), degrees."""
    nod_deg: float = 3.5
    """Peak head nod on a prominent syllable, degrees."""
    gaze: float = 0.08
    """Typical eyeLook* weight of gaze shifts (~2.4 degrees)."""
    brow_raise: float = 0.18
    """browInnerUp/OuterUp on emphasised, high-pitched syllables."""


def blink_curve(num_frames: int, fps: float, rng: np.random.Generator, per_minute: float,
                pauses: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Eyelid closure [T] in [0, 1]: gamma-distributed intervals, 70 ms close, 30 ms hold, 160 ms open.

    `pauses` [T] (1 in speech pauses) pulls blinks into nearby pauses, where people tend to blink.
    """
    blink = np.zeros(num_frames, np.float32)
    if num_frames == 0 or per_minute <= 0:
        return blink
    t = np.arange(num_frames) / fps
    mean_gap = 60.0 / per_minute
    shape = 3.0  # gamma shape > 1: blinks rarely come back to back
    time = rng.uniform(0.2, 1.0) * mean_gap
    while time < t[-1] + 0.3:
        onsets = [time]
        if rng.random() < 0.1:  # double blinks happen
            onsets.append(time + rng.uniform(0.3, 0.45))
        if pauses is not None:
            ahead = np.flatnonzero((t >= time) & (t < time + 0.7) & (pauses > 0.5))
            if ahead.size:
                onsets = [o + t[ahead[0]] - time for o in onsets]
        depth = rng.uniform(0.85, 1.0)
        for onset in onsets:
            close = np.clip((t - onset) / 0.07, 0, 1)
            opening = np.clip(1 - (t - onset - 0.10) / 0.16, 0, 1)
            shape_t = np.where(t < onset + 0.10, close, opening) * (t >= onset)
            blink = np.maximum(blink, depth * np.sin(0.5 * np.pi * shape_t) ** 2)
        time = onsets[-1] + max(0.4, rng.gamma(shape, mean_gap / shape))
    return blink


def _ou_noise(num_frames: int, fps: float, rng: np.random.Generator, tau_s: float) -> np.ndarray:
    """Unit-variance Ornstein–Uhlenbeck noise [T] with time constant `tau_s` (smooth wandering)."""
    a = math.exp(-1.0 / (tau_s * fps))
    noise = rng.standard_normal(num_frames) * math.sqrt(1 - a * a)
    out = np.empty(num_frames)
    x = rng.standard_normal()
    for i in range(num_frames):
        x = a * x + noise[i]
        out[i] = x
    # A second pole removes the OU process's jerky derivative.
    return gaussian_filter1d(out, sigma=0.12 * fps) * 1.15


def prominence(phones: Sequence[Phone], num_frames: int, fps: float, energy_db: np.ndarray | None,
               f0_hz: np.ndarray | None) -> list[tuple[float, float]]:  # fmt: skip
    """(time s, strength 0-1) of emphasised syllables: long, loud, high-pitched vowels."""
    vowels = [p for p in phones if p.label in VOWELS]
    if not vowels:
        return []
    scores = []
    for p in vowels:
        mid = 0.5 * (p.start + p.end)
        i = min(num_frames - 1, max(0, int(mid * fps)))
        loud = float(energy_db[i]) / 10.0 if energy_db is not None and energy_db.size else 0.0
        voiced = f0_hz[max(0, i - 2) : i + 3] if f0_hz is not None and f0_hz.size else np.zeros(0)
        pitch = float(np.log2(voiced[voiced > 0].mean() / 150.0)) if np.any(voiced > 0) else 0.0
        scores.append(loud + 2.0 * pitch + 8.0 * p.duration)
    scores = np.asarray(scores)
    z = (scores - scores.mean()) / (scores.std() + 1e-6)
    events: list[tuple[float, float]] = []
    # Strongest first, so that a weaker neighbour within 0.45 s does not steal the beat.
    for p, s in sorted(zip(vowels, z), key=lambda x: -x[1]):
        mid = 0.5 * (p.start + p.end)
        if s > 0.3 and all(abs(mid - t) > 0.45 for t, _ in events):
            events.append((mid, float(min(1.0, 0.4 + 0.4 * s))))
    return sorted(events)


def head_motion(num_frames: int, fps: float, rng: np.random.Generator, activity: np.ndarray,
                events: list[tuple[float, float]], f0_hz: np.ndarray | None,
                config: TeacherConfig = TeacherConfig()) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Head rotation [T, 3] (radians) and translation [T, 3] (cm): sway, nods on emphasis, pitch following F0."""
    rotation = np.zeros((num_frames, 3))
    translation = np.zeros((num_frames, 3))
    if num_frames == 0:
        return rotation.astype(np.float32), translation.astype(np.float32)
    t = np.arange(num_frames) / fps
    talking = gaussian_filter1d(activity.astype(np.float64), sigma=0.5 * fps)
    liveliness = 0.45 + 0.55 * np.clip(talking, 0, 1)  # people move more while they talk
    sway = math.radians(config.head_sway_deg)
    rotation[:, 1] = sway * _ou_noise(num_frames, fps, rng, 1.8) * liveliness
    rotation[:, 0] = 0.6 * sway * _ou_noise(num_frames, fps, rng, 1.2) * liveliness
    rotation[:, 2] = 0.4 * sway * _ou_noise(num_frames, fps, rng, 2.5) * liveliness
    nod = math.radians(config.nod_deg)
    for when, strength in events:
        # Down-and-back bump of ~0.45 s that starts just before the vowel: a beat gesture.
        d = (t - when + 0.05) / 0.16
        rotation[:, 0] += nod * strength * rng.uniform(0.7, 1.2) * np.exp(-0.5 * d * d)
        rotation[:, 1] += nod * 0.3 * strength * rng.uniform(-1, 1) * np.exp(-0.5 * (d / 1.6) ** 2)
    if f0_hz is not None and np.any(f0_hz > 0):
        voiced = f0_hz > 0
        log_f0 = np.where(voiced, np.log2(np.maximum(f0_hz, 1) / np.median(f0_hz[voiced])), 0.0)
        rotation[:, 0] -= math.radians(1.5) * gaussian_filter1d(
            log_f0, sigma=0.15 * fps
        )  # rising pitch, chin up
    breathing = np.sin(2 * np.pi * rng.uniform(0.2, 0.3) * t + rng.uniform(0, 2 * np.pi))
    rotation[:, 0] += math.radians(0.5) * breathing
    # The head pivots at the neck, ~10 cm below the head's origin: rotations move it a little.
    translation[:, 0] = 10.0 * np.sin(rotation[:, 2]) * 0.5 + 0.3 * _ou_noise(num_frames, fps, rng, 3.0)
    translation[:, 1] = 0.05 * breathing + 0.15 * _ou_noise(num_frames, fps, rng, 3.0)
    translation[:, 2] = 0.4 * _ou_noise(num_frames, fps, rng, 4.0) * liveliness
    return rotation.astype(np.float32), translation.astype(np.float32)


def gaze_curves(num_frames: int, fps: float, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Eye yaw/pitch [T, 2] in eyeLook* units: fixations held 0.6-3 s, joined by ~40 ms saccades."""
    gaze = np.zeros((num_frames, 2))
    i = 0
    target = np.zeros(2)
    while i < num_frames:
        hold = int(rng.uniform(0.6, 3.0) * fps)
        # Talkers look back at their listener often: half of the fixations return to the centre.
        target = np.zeros(2) if rng.random() < 0.5 else rng.normal(0, amount, 2) * np.array([1.0, 0.6])
        gaze[i : i + hold] = target
        i += max(hold, 1)
    return gaussian_filter1d(gaze, sigma=max(0.02 * fps, 0.3), axis=0)


class GlanceStream:
    """`gaze_curves` chunk by chunk, for motion that never ends (a live session): fixations held 0.6-3 s,
    half of them back at the listener, joined by fast saccades (60% of the way each frame at 25 fps)."""

    def __init__(self, seed: int, fps: float, amount: float = 0.08) -> None:
        self.rng = np.random.default_rng([int(seed), 11])
        self.fps, self.amount = fps, amount
        self.current = np.zeros(2)
        self.target = np.zeros(2)
        self.left = 0  # frames until the next fixation

    def __call__(self, num_frames: int) -> np.ndarray:
        """Eye yaw/pitch [num_frames, 2] in eyeLook* units, continuing the previous call's."""
        gaze = np.zeros((num_frames, 2))
        pull = min(1.0, 0.6 * 25.0 / self.fps)
        for i in range(num_frames):
            if self.left <= 0:
                self.left = max(1, int(self.rng.uniform(0.6, 3.0) * self.fps))
                centre = self.rng.random() < 0.5
                self.target = (
                    np.zeros(2) if centre else self.rng.normal(0, self.amount, 2) * np.array([1.0, 0.6])
                )
            self.current = self.current + pull * (self.target - self.current)
            gaze[i] = self.current
            self.left -= 1
        return gaze


def apply_gaze(expression: np.ndarray, gaze: np.ndarray) -> None:
    """Add eye yaw/pitch [T, 2] (eyeLook* units) to expressions [T, 53] in place."""
    yaw, pitch = gaze[:, 0], gaze[:, 1]
    idx = EXPRESSION_INDEX
    # Positive yaw: both eyes turn to the subject's left (left eye out, right eye in).
    expression[:, idx["eyeLookOut_L"]] += np.clip(yaw, 0, 1)
    expression[:, idx["eyeLookIn_R"]] += np.clip(yaw, 0, 1)
    expression[:, idx["eyeLookIn_L"]] += np.clip(-yaw, 0, 1)
    expression[:, idx["eyeLookOut_R"]] += np.clip(-yaw, 0, 1)
    for side in ("_L", "_R"):
        expression[:, idx["eyeLookDown" + side]] += np.clip(pitch, 0, 1)
        expression[:, idx["eyeLookUp" + side]] += np.clip(-pitch, 0, 1)


def teacher_motion(
    phones: Sequence[Phone],
    num_frames: int,
    fps: float = 25.0,
    energy_db: np.ndarray | None = None,  # [T] loudness relative to the speech level, dB
    f0_hz: np.ndarray | None = None,  # [T] pitch, 0 where unvoiced
    activity: np.ndarray | None = None,  # [T] voice activity in [0, 1]
    seed: int = 0,
    emotion: str = "neutral",
    emotion_strength: float = 1.0,
    blink_rate: float = 1.0,
    expression_scale: float = 1.0,
    pose_scale: float = 1.0,
    config: TeacherConfig = TeacherConfig(),
) -> Motion:
    """A full `Motion` [T frames at fps] from timed phones and optional prosody; lips depend only on the phones."""
    if emotion not in EMOTIONS:
        raise HeadsplatError(f"unknown emotion {emotion!r}; choose one of {', '.join(EMOTIONS)}")
    for name, arr in (("energy_db", energy_db), ("f0_hz", f0_hz), ("activity", activity)):
        if arr is not None and np.asarray(arr).shape != (num_frames,):
            raise HeadsplatError(f"{name} must have one value per frame ({num_frames}), got {np.shape(arr)}")
    rng = np.random.default_rng(seed)
    if activity is None:
        speaking = np.zeros(num_frames)
        times = np.arange(num_frames) / fps
        for p in phones:
            if p.label != "SIL":
                speaking[(times >= p.start) & (times < p.end)] = 1.0
        activity = speaking
    activity = np.asarray(activity, np.float64)
    expression = viseme_curves(phones, num_frames, fps).astype(np.float64)
    events = prominence(phones, num_frames, fps, energy_db, f0_hz)
    t = np.arange(num_frames) / fps
    # Brows lift with emphasis (a raised-brow beat on the strongest syllables).
    brows = np.zeros(num_frames)
    for when, strength in events:
        if strength > 0.6 and rng.random() < 0.6:
            brows += strength * np.exp(-0.5 * ((t - when) / 0.2) ** 2)
    for name in ("browInnerUp", "browOuterUp"):
        for shape in _shapes(name):
            expression[:, EXPRESSION_INDEX[shape]] += config.brow_raise * np.clip(brows, 0, 1)
    strength = float(np.clip(emotion_strength, 0, 2))
    for name, value in EMOTION_OFFSETS[emotion].items():
        for shape in _shapes(name):
            expression[:, EXPRESSION_INDEX[shape]] += strength * value
    apply_gaze(expression, gaze_curves(num_frames, fps, rng, config.gaze))
    pauses = (gaussian_filter1d(activity, sigma=0.1 * fps) < 0.2).astype(np.float64) if num_frames else None
    blink = blink_curve(num_frames, fps, rng, config.blinks_per_minute * blink_rate, pauses)
    for side in ("_L", "_R"):
        i = EXPRESSION_INDEX["eyeBlink" + side]
        expression[:, i] = np.maximum(expression[:, i], blink)
    rotation, translation = head_motion(num_frames, fps, rng, activity, events, f0_hz, config)
    rotation[:, 0] += strength * EMOTION_PITCH[emotion]
    motion = Motion(np.clip(expression, 0, 1), rotation, translation, fps)
    return motion.scaled(expression_scale, pose_scale)

"""The controls every motion generator takes, and their limits (no torch: the CLIs' flags and `--help` are
built from these without loading a model).

`models.motion_diffusion` and `pipelines.audio_to_motion` re-export them where they were first defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from models.errors import HeadsplatError

#: The facial emotions a generator can add (models.visemes.EMOTION_OFFSETS holds their shapes).
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised")

#: Motion frame rates the generators accept.
MIN_FPS, MAX_FPS = 1.0, 120.0


def check_fps(fps: float) -> float:
    """`fps` if it is a usable motion frame rate, in [MIN_FPS, MAX_FPS]; NaN and inf are refused."""
    if not (fps >= MIN_FPS and fps <= MAX_FPS):
        raise HeadsplatError(f"fps must be in [{MIN_FPS:g}, {MAX_FPS:g}]; got {fps}")
    return fps


#: Most sampling steps a generation takes: the model is trained for few-step sampling, and more steps
#: only cost time. 0 selects the rule-based teacher.
MAX_STEPS = 10
#: Largest expression_scale, pose_scale and blink_rate: beyond it faces tear and blinks flicker.
MAX_SCALE = 10.0


@dataclass
class MotionControls:
    """The controls of generated motion, the same for every generator (Talk, Avatar3D, audio_to_motion)."""

    steps: int = 3
    """Motion diffusion sampling steps; 0 uses the rule-based teacher alone."""
    seed: int = 0
    """Seed of head motion, blinks and gaze (lip shapes do not depend on it)."""
    emotion: str = "neutral"
    """Facial emotion."""
    expression_scale: float = 1.0
    """Multiplies facial expression (mouth and brows); 0.5 is subtler, 1.5 exaggerated."""
    pose_scale: float = 1.0
    """Multiplies head movement; 0 keeps the head still."""
    blink_rate: float = 1.0
    """Multiplies the natural blink rate (about 17 per minute while talking)."""
    still: bool = False
    """No head movement and no gaze drift: only the face talks."""

    def check(self) -> None:
        """Refuse controls no generator takes (steps 0 to MAX_STEPS, scales 0 to MAX_SCALE)."""
        if not 0 <= self.steps <= MAX_STEPS:
            raise HeadsplatError(
                f"steps must be 0-{MAX_STEPS} (0 selects the rule-based teacher), got {self.steps}"
            )
        if self.seed < 0:
            raise HeadsplatError(f"seed must be 0 or more, got {self.seed}")
        if self.emotion not in EMOTIONS:
            raise HeadsplatError(f"unknown emotion {self.emotion!r}; choose one of {', '.join(EMOTIONS)}")
        for name in ("expression_scale", "pose_scale", "blink_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= MAX_SCALE):
                raise HeadsplatError(
                    f"{name} must be a non-negative number, at most {MAX_SCALE:g}; got {value}"
                )


@dataclass
class GenerationControls(MotionControls):
    """The motion controls plus the sampler's own knobs: everything one generation takes."""

    guidance: float = 1.0
    """Classifier-free guidance on audio (0 = plain conditional sampling)."""
    emotion_strength: float = 0.8
    """0-1 strength of the emotion."""
    voice_gate: bool = True
    """Scale lip movement by voice activity, so that noise and silence keep the mouth closed."""

    @classmethod
    def from_controls(cls, controls: MotionControls, **knobs) -> GenerationControls:
        """`controls` (a pipeline's config is one) with the sampler's knobs at their defaults or `knobs`."""
        return cls(**{f.name: getattr(controls, f.name) for f in fields(MotionControls)}, **knobs)

    def check(self) -> None:
        """As MotionControls.check, for the diffusion model: at least one step (the teacher is not sampled)."""
        if not 1 <= self.steps <= MAX_STEPS:
            raise HeadsplatError(
                f"steps must be 1-{MAX_STEPS} for the diffusion model (0 selects the teacher), got {self.steps}"
            )
        super().check()
        if not math.isfinite(self.guidance):
            raise HeadsplatError(f"guidance must be a number, got {self.guidance}")
        if not 0.0 <= self.emotion_strength <= 1.0:  # NaN fails too
            raise HeadsplatError(f"emotion_strength must be 0-1, got {self.emotion_strength}")

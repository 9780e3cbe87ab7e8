"""Audio-conditioned motion diffusion: a small transformer that denoises windows of `Motion` frames.

The motion space is explicit (Ditto-style): each frame is the 53 ICT expression weights plus head rotation
and translation, normalised per channel. A window holds `context` past frames (given, clean), `chunk` new
frames and `lookahead` frames that peek at future audio; the network predicts the clean window (x0) from a
noisy one under rectified-flow noising x_t = (1 - t) x0 + t ε. Sampling is a few Euler steps (DDIM-like),
with classifier-free guidance on the audio. Long audio is generated window after window, each conditioned
on the frames before it, with the look-ahead frames of one window crossfaded into the next: offline
generation and streaming run the same loop, only their chunk sizes differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn

from models.controls import MAX_STEPS as MAX_STEPS  # re-exported: importers read the limits from here
from models.controls import GenerationControls
from models.controls import MotionControls as MotionControls
from models.errors import HeadsplatError
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS, Motion
from models.visemes import EMOTIONS, LIP_CHANNELS

MOTION_DIM = NUM_EXPRESSIONS + 6  # expressions, rotation (radians), translation (cm)
#: Expression columns that move the lips; they get more loss weight and the voice-activity gate.
LIP_COLUMNS: tuple[int, ...] = tuple(
    EXPRESSION_INDEX[s]
    for c in LIP_CHANNELS
    for s in ((c,) if c in EXPRESSION_INDEX else (c + "_L", c + "_R"))
    if s in EXPRESSION_INDEX
)
BLINK_COLUMNS = (EXPRESSION_INDEX["eyeBlink_L"], EXPRESSION_INDEX["eyeBlink_R"])
#: Lip columns the voice-activity gate scales: articulation only, so an emotion's smile survives silence.
GATED_COLUMNS: tuple[int, ...] = tuple(
    c for c in LIP_COLUMNS if c not in (EXPRESSION_INDEX["mouthSmile_L"], EXPRESSION_INDEX["mouthSmile_R"])
)


@dataclass(frozen=True)
class MotionModelConfig:
    """Shape of the motion diffusion transformer."""

    audio_dim: int = 133
    """Audio feature width per frame (models.audio.FeatureConfig.dim)."""
    width: int = 128
    """Transformer width."""
    depth: int = 4
    """Transformer blocks."""
    heads: int = 4
    """Attention heads."""
    mlp_ratio: float = 2.0
    """MLP hidden width / width."""
    max_frames: int = 128
    """Longest window (context + chunk + lookahead) the positional table covers."""
    context: int = 8
    """Past frames each window is conditioned on."""
    fps: float = 25.0
    """Motion frame rate the model was trained at."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MotionModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HeadsplatError(f"motion model config has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**data)


def motion_to_array(motion: Motion) -> np.ndarray:
    """[T, 59] rows: 53 expressions, rotation (radians), translation (cm)."""
    return np.concatenate([motion.expression, motion.rotation, motion.translation], axis=1).astype(np.float32)


def array_to_motion(values: np.ndarray, fps: float) -> Motion:
    """Inverse of `motion_to_array` (expressions clipped to [0, 1])."""
    values = np.asarray(values, np.float32)
    assert values.ndim == 2 and values.shape[1] == MOTION_DIM, values.shape
    e = NUM_EXPRESSIONS
    return Motion(np.clip(values[:, :e], 0, 1), values[:, e : e + 3], values[:, e + 3 :], fps)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:  # t: [B] in [0, 1]
    """Sinusoidal embedding [B, dim] of noise levels."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t[:, None].float() * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class Block(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT, Peebles & Xie 2023)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:  # x: [B, L, W], cond: [B, W]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(nn.functional.silu(cond))[
            :, None
        ].chunk(6, -1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class MotionDenoiser(nn.Module):
    """Predicts clean normalised motion x0 [B, L, 59] from noisy motion, noise level and conditioning."""

    def __init__(self, config: MotionModelConfig = MotionModelConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.audio_in = nn.Linear(config.audio_dim, w)
        # Two 5-tap convolutions give each frame ±4 frames (±160 ms) of acoustic context: enough to see
        # a plosive's burst from its closure and a vowel's formant transitions.
        self.audio_conv = nn.ModuleList([nn.Conv1d(w, w, 5, padding=2) for _ in range(2)])
        self.null_audio = nn.Parameter(torch.zeros(w))
        self.motion_in = nn.Linear(2 * MOTION_DIM + 1, w)
        self.position = nn.Parameter(torch.randn(config.max_frames, w) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.emotion = nn.Linear(len(EMOTIONS), w, bias=False)
        self.blink = nn.Linear(1, w)
        self.blocks = nn.ModuleList([Block(w, config.heads, config.mlp_ratio) for _ in range(config.depth)])
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(w, 2 * w)
        self.out = nn.Linear(w, MOTION_DIM)
        nn.init.zeros_(self.out_modulation.weight)
        nn.init.zeros_(self.out_modulation.bias)
        # Motion statistics (set from the training data) map raw frames to ~unit-variance channels.
        self.register_buffer("motion_mean", torch.zeros(MOTION_DIM))
        self.register_buffer("motion_std", torch.ones(MOTION_DIM))

    def encode_audio(
        self, audio: Tensor, keep: Tensor | None = None
    ) -> Tensor:  # audio: [B, L, D], keep: [B]
        """Audio tokens [B, L, W]; rows where `keep` is False get the learned null (for guidance)."""
        h = self.audio_in(audio)
        for conv in self.audio_conv:
            h = h + nn.functional.gelu(conv(h.transpose(1, 2)).transpose(1, 2))
        if keep is not None:
            h = torch.where(keep[:, None, None], h, self.null_audio.expand_as(h))
        return h

    def forward(
        self,
        x: Tensor,  # [B, L, 59] noisy normalised motion
        t: Tensor,  # [B] noise level in [0, 1]
        audio_tokens: Tensor,  # [B, L, W] from encode_audio
        known: Tensor,  # [B, L, 59] clean normalised context frames (0 elsewhere)
        known_mask: Tensor,  # [B, L] 1 where `known` holds a frame
        emotion: Tensor,  # [B, 5] emotion one-hot times strength
        blink_rate: Tensor,  # [B] blink-rate multiplier (1 = the teacher's average)
    ) -> Tensor:
        length = x.shape[1]
        if length > self.config.max_frames:
            raise HeadsplatError(f"window of {length} frames exceeds the model's {self.config.max_frames}")
        mask = known_mask[..., None].to(x.dtype)
        tokens = self.motion_in(torch.cat([x * (1 - mask), known * mask, mask], dim=-1))
        tokens = tokens + audio_tokens + self.position[:length]
        cond = self.time_mlp(timestep_embedding(t, self.config.width))
        cond = cond + self.emotion(emotion) + self.blink(torch.log(blink_rate.clamp(min=0.05))[:, None])
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.out_modulation(nn.functional.silu(cond))[:, None].chunk(2, -1)
        x0 = self.out(self.norm_out(tokens) * (1 + scale) + shift)
        # Context frames are known: return them exactly so samplers keep them fixed.
        return x0 * (1 - mask) + known * mask

    def normalize(self, values: Tensor) -> Tensor:
        return (values - self.motion_mean) / self.motion_std

    def denormalize(self, values: Tensor) -> Tensor:
        return values * self.motion_std + self.motion_mean


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------
# Sampling
def flow_sigmas(steps: int, shift: float = 1.0) -> Tensor:
    """Noise levels [steps + 1] from 1 to 0; `shift` > 1 spends more steps at high noise (SD3's time shift)."""
    if steps < 1:
        raise HeadsplatError(f"diffusion needs at least 1 step, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def sample_euler(
    model: Callable[..., Tensor],
    x: Tensor,  # [B, L, C] pure noise at sigmas[0]
    sigmas: Tensor,  # [steps + 1], decreasing to 0
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Euler sampler for rectified flow with an x0-predicting denoiser (≡ DDIM, η = 0; Song et al. 2021).

    `model(x, sigma, **extra_args)` returns the denoised estimate; the k-diffusion sampler signature.
    """
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised
        else:
            # x_t = (1 - t) x0 + t ε  ⇒  ε̂ = (x_t - (1 - t) x̂0) / t; step along the straight path.
            eps = (x - (1 - sigma) * denoised) / sigma
            x = (1 - sigma_next) * denoised + sigma_next * eps
    return x


class GuidedDenoiser:
    """Wraps a MotionDenoiser with classifier-free guidance on audio: x0 = c + g (c - u)."""

    def __init__(self, net: MotionDenoiser, guidance: float) -> None:
        self.net = net
        self.guidance = float(guidance)

    def __call__(self, x: Tensor, t: Tensor, audio: Tensor, known: Tensor, known_mask: Tensor,
                 emotion: Tensor, blink_rate: Tensor) -> Tensor:  # fmt: skip
        if self.guidance == 0:
            tokens = self.net.encode_audio(audio)
            return self.net(x, t, tokens, known, known_mask, emotion, blink_rate)
        b = x.shape[0]
        keep = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)])
        tokens = self.net.encode_audio(torch.cat([audio, audio]), keep)
        both = self.net(
            torch.cat([x, x]), torch.cat([t, t]), tokens, torch.cat([known, known]),
            torch.cat([known_mask, known_mask]), torch.cat([emotion, emotion]), torch.cat([blink_rate, blink_rate]),
        )  # fmt: skip
        cond, uncond = both[:b], both[b:]
        return cond + self.guidance * (cond - uncond)


# --------------------------------------------------------------------------------------------------
# Window-by-window generation
def _emotion_vector(controls: GenerationControls) -> Tensor:
    vec = torch.zeros(1, len(EMOTIONS))
    if controls.emotion == "neutral":
        vec[0, 0] = 1.0
    else:
        vec[0, EMOTIONS.index(controls.emotion)] = float(min(controls.emotion_strength, 1.5))
    return vec


class WindowGenerator:
    """Generates normalised motion window by window from a stream of audio features; holds O(window) state."""

    def __init__(self, net: MotionDenoiser, controls: GenerationControls, chunk: int, lookahead: int) -> None:
        controls.check()
        context = net.config.context
        if chunk < 1 or lookahead < 0 or context + chunk + lookahead > net.config.max_frames:
            raise HeadsplatError(
                f"chunk {chunk} + lookahead {lookahead} + context {context} must fit {net.config.max_frames} frames"
            )
        self.net, self.controls = net, controls
        self.chunk, self.lookahead, self.context = chunk, lookahead, context
        self.denoiser = GuidedDenoiser(net, controls.guidance)
        self.sigmas = flow_sigmas(controls.steps)
        self.generator = torch.Generator().manual_seed(int(controls.seed))
        self.emotion = _emotion_vector(controls)
        self.blink_rate = torch.tensor([max(controls.blink_rate, 0.05)])
        self.past: Tensor | None = None  # [context', 59] last final frames (normalised)
        self.tentative: Tensor | None = None  # [lookahead', 59] previous window's look-ahead frames
        self.past_audio: Tensor | None = None  # [context', D] audio features of the past frames

    @torch.no_grad()
    def step(
        self, audio: Tensor, final: bool
    ) -> Tensor:  # audio: [chunk + lookahead', D] new frames' features
        """Normalised motion [chunk', 59] for the first `chunk` of the given frames (all of them if final)."""
        new = audio.shape[0] if final else min(self.chunk, audio.shape[0])
        past = self.past if self.past is not None else audio.new_zeros(0, MOTION_DIM)
        past_audio = self.past_audio if self.past_audio is not None else audio.new_zeros(0, audio.shape[1])
        window_audio = torch.cat([past_audio, audio])[None]
        length = window_audio.shape[1]
        known = torch.zeros(1, length, MOTION_DIM)
        known[0, : past.shape[0]] = past
        known_mask = torch.zeros(1, length)
        known_mask[0, : past.shape[0]] = 1
        noise = torch.randn(1, length, MOTION_DIM, generator=self.generator)
        extra = {"audio": window_audio, "known": known, "known_mask": known_mask,
                 "emotion": self.emotion, "blink_rate": self.blink_rate}  # fmt: skip
        window = sample_euler(self.denoiser, noise, self.sigmas, extra)[0, past.shape[0] :]
        if self.tentative is not None and self.tentative.shape[0]:
            # Crossfade the previous window's look-ahead guess into this window's frames.
            n = min(self.tentative.shape[0], window.shape[0])
            ramp = torch.linspace(0, 1, n + 2)[1:-1, None]
            window[:n] = (1 - ramp) * self.tentative[:n] + ramp * window[:n]
        out = window[:new]
        self.tentative = window[new:]
        history = torch.cat([past, out])
        self.past = history[-self.context :]
        self.past_audio = torch.cat([past_audio, audio[:new]])[-self.context :]
        return out


class BlinkKeeper:
    """Adds a seeded procedural blink whenever the generated eyes stay open much longer than people do.

    The model blinks at a natural rate while talking but rarely in long silences (few training clips are
    silent); a face that never blinks looks dead. Works chunk by chunk, so streaming and offline agree.
    """

    def __init__(self, seed: int, blink_rate: float, fps: float) -> None:
        self.rng = np.random.default_rng([int(seed), 7])
        self.fps = fps
        self.mean_gap = 60.0 / (17.0 * max(blink_rate, 1e-3)) if blink_rate > 0 else math.inf
        self.open_frames = 0
        self.limit = self._draw_limit()
        self.pending = np.zeros(0, np.float32)  # rest of a blink that crosses a chunk boundary

    def _draw_limit(self) -> float:
        # Twice the mean gap on average: only fills in when the model's own blinks are missing.
        return self.fps * (self.mean_gap + self.rng.gamma(3.0, self.mean_gap / 3.0))

    def _shape(self) -> np.ndarray:
        t = np.arange(int(0.3 * self.fps) + 1) / self.fps
        close = np.clip(t / 0.07, 0, 1)
        opening = np.clip(1 - (t - 0.10) / 0.16, 0, 1)
        return (
            self.rng.uniform(0.85, 1.0) * np.sin(0.5 * np.pi * np.where(t < 0.10, close, opening)) ** 2
        ).astype(np.float32)

    def __call__(self, blink: np.ndarray) -> np.ndarray:  # blink: [T] eyeBlink weights
        """The blink curve [T] with procedural blinks added where the eyes stayed open too long."""
        out = blink.astype(np.float32).copy()
        i = 0
        if self.pending.size:
            n = min(self.pending.size, out.size)
            out[:n] = np.maximum(out[:n], self.pending[:n])
            self.pending = self.pending[n:]
            i = n
        while i < out.size:
            if out[i] > 0.5:
                self.open_frames = 0
            else:
                self.open_frames += 1
                if self.open_frames > self.limit:
                    shape = self._shape()
                    n = min(shape.size, out.size - i)
                    out[i : i + n] = np.maximum(out[i : i + n], shape[:n])
                    self.pending = shape[n:]
                    self.open_frames = 0
                    self.limit = self._draw_limit()
                    i += n
                    continue
            i += 1
        return out


#: Gain on the sampled head rotation (pitch, yaw, roll). The few-step sampler regresses the slow,
#: random head sway towards the mean: on the shipped speech and 18 s of real speech (seeds 0-4) its yaw
#: std was 1.0-1.9°, pitch 0.8-1.7°, roll 0.3-1.1°, a third to a half of real speakers' (yaw 3-4°, pitch
#: 2-3°; issue #16). The gain restores those statistics; `pose_scale` still scales them for less or more.
MODEL_POSE_GAIN = (1.9, 2.6, 2.0)


def postprocess(
    values: np.ndarray,
    activity: np.ndarray,
    controls: GenerationControls,
    fps: float,
    blinks: BlinkKeeper | None = None,
    pose_gain: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Motion:
    """Raw frames [T, 59] → Motion with the voice gate, blink keeper, pose gain (per rotation axis),
    scales and `still` applied."""
    values = values.copy()
    values[:, NUM_EXPRESSIONS : NUM_EXPRESSIONS + 3] *= np.asarray(pose_gain, values.dtype)
    if blinks is not None:
        both = blinks(values[:, list(BLINK_COLUMNS)].mean(1))
        for c in BLINK_COLUMNS:
            values[:, c] = np.maximum(values[:, c], both)
    if controls.voice_gate and activity.size:
        gate = np.clip(activity * 1.5, 0, 1)[:, None]
        values[:, list(GATED_COLUMNS)] *= gate
    motion = array_to_motion(values, fps)
    if controls.still:
        motion.rotation[:] = 0
        motion.translation[:] = 0
        for name in ("eyeLookIn", "eyeLookOut", "eyeLookUp", "eyeLookDown"):
            for side in ("_L", "_R"):
                motion.expression[:, EXPRESSION_INDEX[name + side]] = 0
    return motion.scaled(controls.expression_scale, controls.pose_scale)


def generate_frames(
    net: MotionDenoiser,
    features: Iterator[tuple[np.ndarray, bool]],
    controls: GenerationControls,
    chunk: int,
    lookahead: int,
) -> Iterator[np.ndarray]:
    """Raw motion frames [chunk, 59] per window from an iterator of (audio features [n, D], is_last) blocks.

    Feature blocks may have any size; frames are emitted as soon as `chunk + lookahead` frames are buffered.
    """
    gen = WindowGenerator(net, controls, chunk, lookahead)
    buffer = np.zeros((0, net.config.audio_dim), np.float32)
    for block, last in features:
        block = np.asarray(block, np.float32)
        if block.ndim != 2 or block.shape[1] != net.config.audio_dim:
            raise HeadsplatError(
                f"audio features must be [T, {net.config.audio_dim}], got {list(block.shape)}"
            )
        buffer = np.concatenate([buffer, block])
        window = chunk + lookahead
        # Mid-stream, a full window is needed; at the end, the last (at most one window of) frames go at once.
        while buffer.shape[0] > window or (not last and buffer.shape[0] == window):
            out = gen.step(torch.from_numpy(buffer[:window]), final=False)
            buffer = buffer[out.shape[0] :]
            yield net.denormalize(out).numpy()
        if last:
            if buffer.shape[0]:
                yield net.denormalize(gen.step(torch.from_numpy(buffer), final=True)).numpy()
            return

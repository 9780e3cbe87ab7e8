"""Talk as a stream: short playable video chunks (each with its slice of the audio) while the full mp4 is written.

The browser app shows the first chunk as soon as it is rendered instead of after the whole video; the
chunks are plain H.264/AAC .mp4 files written by the project's one `VideoWriter`, so any player (and
Gradio's streaming `gr.Video`) takes them. The complete mp4 and the motion file are ready when the
generator is exhausted.

    for event in stream_talk(TalkConfig(audio="speech.wav", output="out/talk.mp4"), workdir):
        if event.chunk is not None:
            show(event.chunk)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import HeadsplatError
from pipelines.drivers import make_motion
from pipelines.talk import TalkConfig, check_config, prepare_avatar, render_frames

AUDIO_RATE = 16_000  # Hz: the rate `pipelines.audio_io.load_audio` delivers


@dataclass
class StreamConfig:
    """How `stream_talk` cuts the video and what it refuses."""

    chunk_seconds: float = 1.0
    """Length of each streamed chunk after the first, seconds (shorter = lower latency, more overhead)."""
    first_chunk_seconds: float = 0.5
    """Length of the first chunk, seconds: short, so the video starts soon after the motion is made."""
    max_seconds: float | None = None
    """Refuse drivers longer than this many seconds (None: no limit beyond the audio loader's)."""
    motion_file: str | None = None
    """Also write the driving motion here (.csv, .npz or .json), before any frame is rendered."""


@dataclass
class TalkEvent:
    """One step of a streamed Talk run."""

    stage: str
    """'avatar' (portrait fitted), 'motion' (motion made), 'chunk' (a chunk is ready) or 'done'."""
    frames_done: int
    """Frames rendered so far."""
    frames_total: int
    """Frames in the whole video (0 until the motion is known)."""
    chunk: Path | None = None
    """The chunk just written (stage 'chunk'): an .mp4 of frames [frames_done - n, frames_done)."""
    video: Path | None = None
    """The complete mp4 (stage 'done')."""


def chunk_bounds(num_frames: int, fps: float, config: StreamConfig) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) of the chunks: a short first one, then chunk_seconds each."""
    if not (config.chunk_seconds > 0 and config.first_chunk_seconds > 0):
        raise HeadsplatError("chunk lengths must be positive seconds")
    first = max(1, round(config.first_chunk_seconds * fps))
    rest = max(1, round(config.chunk_seconds * fps))
    bounds, start = [], 0
    while start < num_frames:
        stop = min(num_frames, start + (first if start == 0 else rest))
        bounds.append((start, stop))
        start = stop
    return bounds


def audio_slice(samples: np.ndarray, start_frame: int, stop_frame: int, fps: float) -> np.ndarray:
    """The samples [N] (16 kHz) that play under frames [start, stop), zero-padded past the audio's end."""
    first = round(start_frame / fps * AUDIO_RATE)
    last = round(stop_frame / fps * AUDIO_RATE)
    piece = samples[first:last]
    if len(piece) < last - first:
        piece = np.concatenate([piece, np.zeros(last - first - len(piece), np.float32)])
    return piece


def check_audio_length(audio: str | os.PathLike | None, max_seconds: float | None) -> None:
    """Refuse audio longer than `max_seconds` (read no further than the limit) before work is spent on it."""
    from pipelines.audio_io import load_audio

    if max_seconds is None or not audio:
        return
    try:
        load_audio(audio, max_seconds=max_seconds)
    except HeadsplatError as err:
        if "limit" not in str(err):
            raise
        raise HeadsplatError(
            f"the audio is longer than {max_seconds:g} s, the most allowed here: use a shorter clip"
        ) from err


def stream_talk(
    cfg: TalkConfig,
    workdir: str | os.PathLike,
    config: StreamConfig | None = None,
    device: str = "cpu",
) -> Iterator[TalkEvent]:
    """Run Talk, yielding each chunk (.mp4 in `workdir`) as it is rendered; cfg.output is complete at 'done'.

    `device` is 'cpu' (the numba renderer) or 'cuda[:N]' (gsplat), as `pipelines.device.resolve_device`
    gives it; cfg.device is not consulted, so the caller decides where rendering happens (the app keeps it
    on the CPU unless gsplat is usable).
    """
    from pipelines.audio_io import load_audio, save_wav
    from pipelines.motion_io import save_motion
    from pipelines.video_io import VideoWriter

    config = config or StreamConfig()
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise HeadsplatError(f"work folder does not exist: {workdir.name}")
    check_config(cfg)
    check_audio_length(cfg.audio, config.max_seconds)
    photo, avatar = prepare_avatar(cfg)  # the portrait first: a photo without a face fails fast
    if device != "cpu":
        avatar = avatar.to(device)
    yield TalkEvent("avatar", 0, 0)
    motion, audio = make_motion(cfg, workdir)
    if motion.num_frames == 0:
        raise HeadsplatError("the driver is too short to make a single frame")
    if config.max_seconds is not None and motion.duration > config.max_seconds + 0.5:
        raise HeadsplatError(
            f"the speech lasts {motion.duration:.0f} s; the most allowed here is {config.max_seconds:g} s: "
            "use a shorter text or clip"
        )
    if config.motion_file:
        save_motion(motion, config.motion_file)
    total = motion.num_frames
    yield TalkEvent("motion", 0, total)
    samples = load_audio(audio) if audio is not None else None
    backend = "cpu" if device == "cpu" else "gsplat"
    frames = render_frames(photo, avatar, motion, crop=cfg.crop, backend=backend)
    with VideoWriter(cfg.output, motion.fps, audio=audio) as full:
        for index, (start, stop) in enumerate(chunk_bounds(total, motion.fps, config)):
            chunk = workdir / f"chunk-{index:04d}.mp4"
            piece = None
            if samples is not None:
                piece = save_wav(
                    audio_slice(samples, start, stop, motion.fps), workdir / f"chunk-{index:04d}.wav"
                )
            with VideoWriter(chunk, motion.fps, audio=piece) as part:
                for _ in range(start, stop):
                    frame = next(frames)
                    full.write(frame)
                    part.write(frame)
            if piece is not None:
                piece.unlink()
            yield TalkEvent("chunk", stop, total, chunk=chunk)
    assert full.frames_written == total, "every motion frame is written once"
    yield TalkEvent("done", total, total, video=Path(cfg.output))

"""Live: a talking head that follows audio as it arrives (a microphone, a TTS, an LLM's voice).

    from pipelines.live import LiveConfig, LiveSession

    session = LiveSession(LiveConfig(image="me.jpg"))  # fits the portrait and loads the model once
    for block in microphone_blocks():                  # float32 samples, any block size, any rate
        session.push(block, sample_rate=48_000)
        for frame in session.frames():                 # frames made so far, oldest first; never waits
            show(frame.image)                          # RGB uint8; frame.time is its place in the audio
    for frame in session.close():                      # the last audio's frames
        show(frame.image)

A worker thread turns the pushed audio into motion with the streaming diffusion model (`chunk` frames at a
time, `lookahead` frames of future audio) and renders each frame at the live size, pasted into the photo.
Every frame carries its latency: from the arrival of the audio at the frame's start to the frame being
ready. When rendering falls behind (latency above `max_latency`), frames of a motion chunk are dropped and
its newest is drawn, so the video coarsens instead of drifting behind the voice. When no audio arrives
for `idle_after` seconds, silence is fed in step with the clock, so the head keeps breathing, blinking
and glancing instead of freezing.

    python -m pipelines.live --audio speech.wav --realtime    # replay a file as if it were a microphone
"""

from __future__ import annotations

import argparse
import bisect
import collections
import dataclasses
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.audio import SAMPLE_RATE, stream_resampler
from models.controls import EMOTIONS, MAX_STEPS, GenerationControls, MotionControls
from models.errors import HeadsplatError
from pipelines.config_cli import add_config_arguments, config_from_args, flag, no_flag
from pipelines.lazy import bind, bind_unless_main
from pipelines.portrait import DEFAULT_PORTRAIT

if TYPE_CHECKING:
    from models.gaussian_avatar import PortraitAvatar
    from models.latent import Motion
    from models.mouth_rest import ease_from_photo
    from models.visemes import GlanceStream, apply_gaze
    from pipelines.audio_to_motion import AudioToMotion
    from pipelines.talk import TalkConfig, draw_frame, frame_paster, prepare_avatar

#: Names that import torch, numba and the renderer (see pipelines.lazy): `--help` answers at once.
_HEAVY = {
    "Motion": "models.latent:Motion",
    "ease_from_photo": "models.mouth_rest:ease_from_photo",
    "GlanceStream": "models.visemes:GlanceStream",
    "apply_gaze": "models.visemes:apply_gaze",
    "AudioToMotion": "pipelines.audio_to_motion:AudioToMotion",
    "TalkConfig": "pipelines.talk:TalkConfig",
    "draw_frame": "pipelines.talk:draw_frame",
    "frame_paster": "pipelines.talk:frame_paster",
    "prepare_avatar": "pipelines.talk:prepare_avatar",
}
bind_unless_main(globals(), _HEAVY)

FPS = 25.0  # the motion model's frame rate: live frames come at it


@dataclass
class LiveConfig(MotionControls):
    """A live session's portrait, sizes, timing rules and motion controls."""

    image: str = field(
        default=str(DEFAULT_PORTRAIT), metadata=flag("-s", "--image", default_help="the shipped one")
    )
    """Portrait photo; its largest face is used unless face_index picks another."""
    face_index: int = 0
    """Which face to animate when the photo has several (0 is the largest)."""
    size: int = 256
    """Side of the square face crop the avatar is rendered at, pixels: 256 holds real time on two cores."""
    max_side: int = 640
    """The photo is downscaled to at most this many pixels a side, so pasting a frame stays cheap."""
    crop: bool = False
    """Give the square face crop instead of the whole photo with the face pasted back."""
    chunk: int = 2
    """Motion frames made per step of the streaming model (each 40 ms): fewer is sooner, more is cheaper."""
    lookahead: int = 2
    """Frames of future audio the model hears before it commits a frame (each adds 40 ms of latency)."""
    max_latency: float = 0.35
    """Seconds: a frame later than this is dropped when a newer one of its chunk is ready (0: never drop)."""
    idle_after: float = 0.5
    """Seconds without audio after which silence is fed in step with the clock, so the head stays alive."""
    queue_seconds: float = 2.0
    """Frames kept for a reader that is not reading, seconds of video; older ones are discarded."""
    max_pending: float = 10.0
    """Seconds of pushed audio the model may have still to hear; beyond it push() waits (a producer faster
    than real time, like a TTS, is held back instead of filling memory)."""
    cache_dir: str | None = None
    """Where built avatars are kept (default: $HEADSPLAT_CACHE or ~/.cache/headsplat); '' disables."""
    weights: str | None = None
    """Motion model weights (.safetensors); default: the shipped ones."""
    keep_motion: bool = field(default=False, metadata=no_flag())
    """Keep the motion of every frame made (`LiveSession.motion()`), e.g. to save it at the end."""
    steps: int = field(
        default=MotionControls.steps,
        metadata=flag(default_help=f"{MotionControls.steps}; at most {MAX_STEPS}"),
    )
    emotion: str = field(default=MotionControls.emotion, metadata=flag(choices=EMOTIONS))

    def check(self) -> None:
        """Refuse values no live session takes, before any work."""
        super().check()
        if self.steps < 1:
            raise HeadsplatError("live motion needs the diffusion model: --steps must be 1 or more")
        if not 64 <= self.size <= 1024:
            raise HeadsplatError(f"--size must be 64-1024 pixels; got {self.size}")
        if not 256 <= self.max_side <= 4096:
            raise HeadsplatError(f"--max-side must be 256-4096 pixels; got {self.max_side}")
        if not 1 <= self.chunk <= 25 or not 0 <= self.lookahead <= 25:
            raise HeadsplatError(
                f"--chunk must be 1-25 and --lookahead 0-25 frames; got {self.chunk}, {self.lookahead}"
            )
        for name in ("max_latency", "idle_after", "queue_seconds", "max_pending"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0 <= value <= 60):
                raise HeadsplatError(f"{name} must be 0-60 seconds; got {value}")
        if self.face_index < 0:
            raise HeadsplatError(f"--face-index must be 0 or more; got {self.face_index}")


class PoseSteadier:
    """Keeps a streamed head near its rest pose: a high-pass (the pose minus its 1 s moving average) and a
    light smoothing, chunk by chunk.

    The streaming model samples each short window's pose anew from the last, so over a minute the head
    wanders like a random walk: at 2-frame chunks yaw spread 10 degrees (std) over the shipped speech, 40
    from end to end, against Talk's offline 3.2; its frame-to-frame steps were twice offline's. Filtered,
    the spread (2.1, 3.8, 1.3 degrees pitch/yaw/roll) and steps match offline's (2.6, 3.2, 1.3).
    """

    def __init__(self, fps: float, tau: float = 1.0, smooth: float = 0.5) -> None:
        self.rate, self.smooth = 1.0 / (tau * fps), smooth
        self.mean: np.ndarray | None = None
        self.out = np.zeros(6)

    def __call__(self, rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pose = np.concatenate([rotation, translation], axis=1).astype(np.float64)
        if self.mean is None:
            self.mean = pose[0].copy()
        steady = np.empty_like(pose)
        for i, value in enumerate(pose):
            self.mean += self.rate * (value - self.mean)
            self.out += self.smooth * ((value - self.mean) - self.out)
            steady[i] = self.out
        return steady[:, :3].astype(np.float32), steady[:, 3:].astype(np.float32)


@dataclass
class LiveFrame:
    """One frame of a live session."""

    index: int
    """Frame number on the audio's timeline (frames dropped to keep up leave gaps)."""
    time: float
    """Seconds into the pushed audio (silence fed while idle included) where the frame starts."""
    image: np.ndarray
    """RGB uint8 [H, W, 3]."""
    latency: float
    """Seconds from the arrival of the audio at the frame's start to the frame being ready."""


@dataclass
class LiveStats:
    """What a session did so far."""

    frames: int = 0
    """Frames made."""
    dropped_late: int = 0
    """Frames skipped because rendering was behind (their chunk's newest frame was drawn instead)."""
    dropped_unread: int = 0
    """Frames discarded because nobody read them within queue_seconds."""
    idle_seconds: float = 0.0
    """Silence fed while no audio arrived."""
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=15_000))
    """Latency of the frames made in the last 10 minutes, seconds."""


class LiveSession:
    """Audio pushed in as it arrives, frames out as soon as they are made (see the module doc)."""

    def __init__(
        self,
        config: LiveConfig | None = None,
        *,
        avatar: PortraitAvatar | None = None,
        photo: np.ndarray | None = None,
        model: AudioToMotion | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Fit the portrait (or take a built `avatar` with its `photo`), load the model, start the worker."""
        bind(globals(), _HEAVY)
        self.config = config = config or LiveConfig()
        config.check()
        if avatar is None:
            talk_cfg = TalkConfig(
                image=config.image, size=config.size, max_side=config.max_side,
                face_index=config.face_index, cache_dir=config.cache_dir,
            )  # fmt: skip
            photo, avatar = prepare_avatar(talk_cfg)
        elif photo is None and not config.crop:
            raise HeadsplatError("a built avatar needs its photo, or crop=True")
        self.avatar, self.photo = avatar, photo
        self.model = model or AudioToMotion.from_pretrained(config.weights)
        self.stats = LiveStats()
        self._clock = clock
        self._paster = None if config.crop else frame_paster(photo, avatar)
        self._offset = avatar.photo_offset().cpu().numpy()
        self._motions: list[Motion] = []
        # The model's eyes barely move (less still in silence): seeded glances keep an idle face alive.
        self._glances = None if config.still else GlanceStream(config.seed, FPS)
        self._steady = PoseSteadier(FPS)
        self._skipped = 0  # chunks in a row drawn not at all (see _render_chunk)
        self._warm_up()
        self._audio: queue.Queue = queue.Queue()
        self._out: collections.deque[LiveFrame] = collections.deque()
        self._out_lock = threading.Lock()
        self._ends: list[int] = []  # end sample (16 kHz timeline) of each pushed block ...
        self._arrivals: list[float] = []  # ... and when it arrived
        self._fed = 0  # samples on the timeline so far (pushed and idle silence)
        self._pending = 0  # samples pushed and not yet taken by the model
        self._room = threading.Condition()
        self._rate: int | None = None
        self._resampler = None
        self._start = clock()
        self._closed = False
        self._abort = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="headsplat-live", daemon=True)
        self._thread.start()

    def _warm_up(self) -> None:
        """Run the model and draw a frame once, so the first spoken frames do not wait for compilation."""
        controls = GenerationControls.from_controls(self.config)
        silence = np.zeros(SAMPLE_RATE // 2, np.float32)
        for motion in self.model.stream(
            [silence], controls, chunk=self.config.chunk, lookahead=self.config.lookahead
        ):
            self.avatar.render_motion(motion, 0, layers=self._paster is not None)
            break

    # ------------------------------------------------------------------------------------ input
    def push(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Queue audio that just arrived: float samples in [-1, 1] (or int16), mono or [N, channels]."""
        if self._closed:
            raise HeadsplatError("this live session is closed")
        self._raise_worker_error()
        block = np.asarray(samples)
        if block.dtype == np.int16:
            block = block.astype(np.float32) / 32768.0
        if block.ndim == 2:  # [N, channels] (or [channels, N] when short and wide): mixed down
            block = block.mean(axis=1) if block.shape[1] <= 8 else block.mean(axis=0)
        if block.ndim != 1:
            raise HeadsplatError(f"audio blocks are [N] or [N, channels]; got shape {np.shape(samples)}")
        block = np.nan_to_num(block.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(-1.0, 1.0)
        if self._rate is None:
            if not 4_000 <= int(sample_rate) <= 384_000:
                raise HeadsplatError(f"sample_rate must be 4000-384000 Hz; got {sample_rate}")
            self._rate = int(sample_rate)
            if self._rate != SAMPLE_RATE:
                self._resampler = stream_resampler(self._rate)
        elif int(sample_rate) != self._rate:
            raise HeadsplatError(f"a session takes one sample rate: {self._rate} Hz, then {sample_rate} Hz")
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block)
        self._queue_audio(block, self._clock())

    def _queue_audio(self, block: np.ndarray, arrival: float) -> None:
        if not block.size:
            return
        limit = max(self.config.max_pending * SAMPLE_RATE, block.size)
        with self._room:  # back-pressure: wait while the model has max_pending seconds still to hear
            while self._pending + block.size > limit and self._thread.is_alive():
                self._room.wait(0.05)
            self._pending += block.size
        self._audio.put((block, arrival))

    # ----------------------------------------------------------------------------------- output
    def frames(self) -> list[LiveFrame]:
        """The frames made since the last call, oldest first (empty when none is ready; never waits)."""
        self._raise_worker_error()
        with self._out_lock:
            ready = list(self._out)
            self._out.clear()
        return ready

    def motion(self) -> Motion:
        """The motion of every frame made so far, dropped ones included (needs keep_motion=True)."""
        if not self.config.keep_motion:
            raise HeadsplatError("this session does not keep its motion: make it with keep_motion=True")
        if not self._motions:
            raise HeadsplatError("no motion made yet")
        parts = self._motions
        return Motion(
            np.concatenate([m.expression for m in parts]), np.concatenate([m.rotation for m in parts]),
            np.concatenate([m.translation for m in parts]), parts[0].fps,
        )  # fmt: skip

    def latest(self) -> LiveFrame | None:
        """The newest frame made since the last call (older ones are skipped), or None."""
        ready = self.frames()
        return ready[-1] if ready else None

    def close(self, timeout: float | None = 60.0, flush: bool = True) -> list[LiveFrame]:
        """End of audio: the model finishes the last frames; returns every frame not read yet.
        `flush=False` stops at once instead (an interrupted caller): audio not yet heard is dropped."""
        if not flush:
            self._abort = True
        if not self._closed:
            self._closed = True
            if self._resampler is not None:
                self._queue_audio(
                    self._resampler.resample_chunk(np.zeros(0, np.float32), last=True), self._clock()
                )
            self._audio.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise HeadsplatError(f"the live worker did not finish within {timeout} s")
        return self.frames()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise HeadsplatError(f"the live worker stopped: {error}") from error

    # ----------------------------------------------------------------------------------- worker
    def _blocks(self) -> Iterator[np.ndarray]:
        """Pushed audio in order; silence in step with the clock while nothing is pushed."""
        wait = max(self.config.idle_after, 0.01)
        while True:
            try:
                item = self._audio.get(timeout=wait)
            except queue.Empty:
                behind = (self._clock() - self._start) - self._fed / SAMPLE_RATE
                if self.config.idle_after > 0 and behind > self.config.idle_after and not self._closed:
                    silence = np.zeros(int(behind * SAMPLE_RATE), np.float32)
                    self.stats.idle_seconds += silence.size / SAMPLE_RATE
                    yield self._arrived(silence, self._clock())
                continue
            if item is None or self._abort:
                return
            with self._room:
                self._pending -= item[0].size
                self._room.notify_all()
            yield self._arrived(*item)

    def _arrived(self, block: np.ndarray, arrival: float) -> np.ndarray:
        self._fed += block.size
        self._ends.append(self._fed)
        self._arrivals.append(arrival)
        return block

    def _arrival_of(self, sample: int) -> float:
        """When the audio at `sample` (16 kHz timeline) arrived; the records before it are let go."""
        k = bisect.bisect_right(self._ends, sample)
        k = min(k, len(self._ends) - 1)
        arrival = self._arrivals[k]
        if k > 64:  # keep the lists short over hours
            del self._ends[: k - 1], self._arrivals[: k - 1]
        return arrival

    def _work(self) -> None:
        try:
            cfg = self.config
            made = 0
            controls = GenerationControls.from_controls(cfg)
            for motion in self.model.stream(
                self._blocks(), controls, chunk=cfg.chunk, lookahead=cfg.lookahead
            ):
                self._render_chunk(motion, made)
                made += motion.num_frames
        except BaseException as err:  # handed to the caller by the next frames(), push() or close()
            self._error = err

    def _render_chunk(self, motion: Motion, first: int) -> None:
        if self._abort:  # close(flush=False): the frames the model still flushes are not drawn
            return
        cfg = self.config
        expression = motion.expression.copy()
        if self._glances is not None:
            apply_gaze(expression, self._glances(motion.num_frames) * cfg.expression_scale)
        if np.any(self._offset):  # the first second eases from the photo's own face (as in Talk)
            expression = ease_from_photo(expression, self._offset, motion.fps, start=first)
        rotation, translation = self._steady(motion.rotation, motion.translation)
        motion = Motion(np.clip(expression, 0.0, 1.0), rotation, translation, motion.fps)
        if cfg.keep_motion:
            self._motions.append(motion)
        last = motion.num_frames - 1
        for j in range(motion.num_frames):
            index = first + j
            arrival = self._arrival_of(int(index * SAMPLE_RATE / motion.fps))
            behind = self._clock() - arrival
            late = cfg.max_latency > 0 and behind > cfg.max_latency
            # Far behind (the CPU is shared), even a chunk's newest frame is skipped, up to three chunks in
            # a row: the model alone is cheap, so the session catches up instead of lagging more and more.
            hopeless = late and behind > 2 * cfg.max_latency and self._skipped < 3
            if late and (j < last or hopeless):
                self.stats.dropped_late += 1  # behind: draw this chunk's newest frame instead (or none)
                self._skipped += j == last
                continue
            self._skipped = 0
            image = draw_frame(self.avatar, motion, j, self._paster)
            latency = self._clock() - arrival
            frame = LiveFrame(index, index / motion.fps, image, latency)
            self.stats.frames += 1
            self.stats.latencies.append(latency)
            with self._out_lock:
                self._out.append(frame)
                while len(self._out) > max(1, round(cfg.queue_seconds * motion.fps)):
                    self._out.popleft()
                    self.stats.dropped_unread += 1


# ---------------------------------------------------------------------------------------- command
@dataclass
class LiveCommand(LiveConfig):
    """`python -m pipelines.live`: replay an audio file as if it were a live microphone."""

    audio: str = field(kw_only=True)
    """Speech to replay (wav, mp3, flac, ...)."""
    realtime: bool = False
    """Push the audio in step with the clock, as a microphone would; without it, as fast as it is taken
    (every frame is made, and latency then measures the backlog)."""
    block_ms: float = 20.0
    """Size of the audio blocks pushed, milliseconds (a microphone's buffer)."""
    output: str | None = field(default=None, metadata=flag("-o", "--output"))
    """Also write the frames as an mp4 with the audio (a dropped frame repeats the one before it)."""
    latency_log: str | None = None
    """Also write every frame's index, time and latency as JSON lines."""
    save_motion: str | None = None
    """Also write the motion that drove the frames (.npz, .json or .csv)."""
    quiet: bool = False
    """Print only the summary, not a line per frame."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.live",
        description="Replay speech as if it came from a microphone through a live session; print each "
        "frame's latency (audio in -> frame out) and the sustained rate.",
    )
    add_config_arguments(parser, LiveCommand, only=("audio", "realtime", "output"))
    add_config_arguments(parser, LiveCommand, skip=("audio", "realtime", "output"))
    return parser


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def replay(cmd: LiveCommand, emit: Callable[[str], None] = print) -> dict:
    """Run `cmd`: push its audio block by block, take the frames as they come, return the summary."""
    import contextlib

    from pipelines.audio_io import load_audio
    from pipelines.cli import check_output
    from pipelines.files import atomic_output
    from pipelines.motion_io import MOTION_SUFFIXES, save_motion
    from pipelines.video_io import VideoWriter

    if cmd.output:
        check_output(cmd.output, [cmd.audio], what="-o file")
    if cmd.save_motion:
        if Path(cmd.save_motion).suffix.lower() not in MOTION_SUFFIXES:
            raise HeadsplatError(
                f"--save-motion must end in {', '.join(MOTION_SUFFIXES)}; got {cmd.save_motion!r}"
            )
        check_output(cmd.save_motion, [cmd.audio, cmd.output], what="--save-motion file")
    if cmd.latency_log:
        check_output(cmd.latency_log, [cmd.audio, cmd.output, cmd.save_motion], what="--latency-log file")
    if not 1.0 <= cmd.block_ms <= 1000.0:
        raise HeadsplatError(f"--block-ms must be 1-1000; got {cmd.block_ms}")
    writer = VideoWriter(cmd.output, FPS, audio=cmd.audio) if cmd.output else None  # checks the suffix
    samples = load_audio(cmd.audio)
    config = LiveConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(LiveConfig)})
    config.keep_motion = bool(cmd.save_motion)
    if not cmd.realtime:
        config.max_latency = 0.0  # a replay as fast as possible: every frame, latency is the backlog
        config.idle_after = 0.0
        config.queue_seconds = 60.0
    session = LiveSession(config)
    step = max(1, int(SAMPLE_RATE * cmd.block_ms / 1000))
    timing: list[tuple[int, float, float]] = []  # index, time, latency of every frame (not the images)
    try:
        with contextlib.ExitStack() as stack:
            video = stack.enter_context(writer) if writer is not None else None
            shown: list[np.ndarray] = []  # the last frame written, repeated for dropped ones

            def take(batch: list[LiveFrame]) -> None:
                for frame in batch:
                    timing.append((frame.index, frame.time, frame.latency))
                    if not cmd.quiet:
                        emit(
                            f"frame {frame.index:5d}  t {frame.time:7.2f} s  latency {1000 * frame.latency:6.1f} ms"
                        )
                    if video is not None:
                        while video.frames_written < frame.index:
                            video.write(shown[0] if shown else frame.image)
                        video.write(frame.image)
                        shown[:] = [frame.image]

            start = time.monotonic()
            for k, i in enumerate(range(0, samples.size, step)):
                if cmd.realtime:
                    time.sleep(max(0.0, start + k * step / SAMPLE_RATE - time.monotonic()))
                session.push(samples[i : i + step])
                take(session.frames())
                if not cmd.realtime and len(timing) + 50 < i / SAMPLE_RATE * FPS:
                    time.sleep(0.001)  # let the worker run: the queue need not hold the whole file at once
            take(session.close())
            wall = time.monotonic() - start
    except BaseException:
        session.close(flush=False)  # an error or Ctrl-C: the worker stops before the interpreter does
        raise
    if cmd.save_motion and timing:
        save_motion(session.motion(), cmd.save_motion)
    if cmd.latency_log:
        lines = [
            json.dumps({"index": i, "time": round(t, 3), "latency": round(lat, 4)}) for i, t, lat in timing
        ]
        with atomic_output(cmd.latency_log) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))
    lat = [t[2] for t in timing]
    minute = int(60 * FPS)
    return {
        "audio_s": round(samples.size / SAMPLE_RATE, 2),
        "wall_s": round(wall, 2),
        "realtime": cmd.realtime,
        "frames": len(timing),
        "dropped_late": session.stats.dropped_late,
        "dropped_unread": session.stats.dropped_unread,
        "sustained_fps": round(len(timing) / wall, 2),
        "latency_ms": {
            "p50": round(1000 * percentile(lat, 50), 1),
            "p95": round(1000 * percentile(lat, 95), 1),
            "max": round(1000 * max(lat), 1) if lat else None,
        },
        "first_minute_p95_ms": round(1000 * percentile(lat[:minute], 95), 1),
        "last_minute_p95_ms": round(1000 * percentile(lat[-minute:], 95), 1),
        "size": cmd.size,
        "chunk": cmd.chunk,
        "lookahead": cmd.lookahead,
    }


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import run_cli

    cmd = config_from_args(LiveCommand, build_parser().parse_args(argv))
    bind(globals(), _HEAVY)

    def work() -> None:
        cmd.check()
        import torch

        torch.set_num_threads(1)  # numba renders in parallel; torch's own threads would only fight it
        print(json.dumps(replay(cmd)), file=sys.stdout)

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())

"""Talk: a portrait and speech (or text, a motion file, a driving video) → a talking-head mp4.

    python -m pipelines.talk --audio speech.wav                 # the shipped portrait says it
    python -m pipelines.talk -s me.jpg --text "Hello there" -o hello.mp4

Steps: fit the ICT head to the portrait → build (or load from the cache) its Gaussian avatar → make a
`Motion` from the driver → render each frame, paste it back into the photo → H.264 mp4 with the audio.
Frames stream to the encoder as they are made; the output appears only when it is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from models.errors import HeadsplatError
from models.gaussian_avatar import PortraitAvatar, PortraitAvatarConfig, build_portrait_avatar
from models.head_model import HeadModel
from models.latent import Motion
from models.visemes import EMOTIONS
from pipelines.image_io import DEFAULT_MAX_SIDE
from renderers.compositing import FramePaster, paste_weight

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORTRAIT = ROOT / "assets" / "defaults" / "portrait.jpg"
DEFAULT_AUDIO = ROOT / "assets" / "defaults" / "speech.wav"
#: Bump when the avatar's contents change, so stale cached avatars are rebuilt.
AVATAR_VERSION = 3
#: Longer --text is refused (about 10 minutes of speech): synthesis and alignment grow with it.
MAX_TEXT_CHARS = 10_000


@dataclass
class TalkConfig:
    """Everything `talk` needs; the CLI and the app fill it in."""

    image: str = str(DEFAULT_PORTRAIT)
    """Portrait photo (any common image format); the largest face is used unless face_index says otherwise."""
    audio: str | None = None
    """Speech to lip-sync (wav, mp3, m4a, flac, ogg, or a video's audio track)."""
    text: str | None = None
    """Text to speak with espeak-ng or flite (used when no audio is given)."""
    motion: str | None = None
    """A motion file (.npz, .json, or Live Link Face .csv) to play instead of generating one."""
    driving: str | None = None
    """A video of a talking face whose tracked motion drives the portrait (its audio is kept)."""
    output: str = "talk.mp4"
    """Where the mp4 goes (written atomically)."""
    fps: float = 25.0
    """Frames per second of the video."""
    size: int | None = None
    """Side of the square face crop the avatar is rendered at, pixels; None: the face crop's own size in
    the photo, at most 512 (frames are pasted back at that size; a bigger render is only downsampled)."""
    steps: int = 3
    """Sampling steps of the motion diffusion model (0: the rule-based teacher alone)."""
    seed: int = 0
    """Seed of head motion, blinks and gaze (lip shapes do not depend on it)."""
    emotion: str = "neutral"
    """Facial emotion: neutral, happy, sad, angry or surprised."""
    expression_scale: float = 1.0
    """Multiplies facial expression (mouth and brows); 0.5 is subtler, 1.5 exaggerated."""
    pose_scale: float = 1.0
    """Multiplies head movement; 0 keeps the head still."""
    blink_rate: float = 1.0
    """Multiplies the natural blink rate (about 17 per minute while talking)."""
    still: bool = False
    """No head movement and no gaze drift: only the face talks."""
    crop: bool = False
    """Write the square face crop instead of pasting it back into the full photo."""
    max_side: int = DEFAULT_MAX_SIDE
    """A photo longer than this (pixels) on either side is downscaled first, so the video is at most this
    size and any photo takes bounded memory and time."""
    face_index: int = 0
    """Which face to animate when the photo has several (0 is the largest)."""
    device: str = "auto"
    """auto, cpu or cuda: where the avatar is rendered (cuda needs gsplat)."""
    save_motion: str | None = None
    """Also write the motion that drove the video (.npz, .json or .csv)."""
    cache_dir: str | None = None
    """Where built avatars are kept (default: $HEADSPLAT_CACHE or ~/.cache/headsplat); "" disables."""
    progress: bool = True
    """Show a progress bar."""


# ------------------------------------------------------------------------------------------------
# Portrait → avatar
def resolve_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise HeadsplatError(f"--device must be auto, cpu or cuda; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise HeadsplatError("--device cuda was asked for but no CUDA GPU is available")
    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


def fit_portrait(image: np.ndarray, face_index: int = 0):
    """Detect the face and fit the ICT head to it; returns the `FaceFit`."""
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


def _cache_path(image_bytes: bytes, cfg: TalkConfig) -> Path | None:
    root = cfg.cache_dir if cfg.cache_dir is not None else os.environ.get("HEADSPLAT_CACHE", "")
    if cfg.cache_dir == "":
        return None
    base = Path(root) if root else Path.home() / ".cache" / "headsplat"
    key = hashlib.sha256(
        image_bytes + f"|v{AVATAR_VERSION}|{cfg.size}|{cfg.face_index}".encode()
    ).hexdigest()[:24]
    return base / "avatars" / f"{key}.safetensors"


def prepare_avatar(cfg: TalkConfig, head: HeadModel | None = None) -> tuple[np.ndarray, PortraitAvatar]:
    """The photo [H, W, 3] uint8 and its avatar, from the cache when this portrait was built before."""
    from pipelines.avatar_io import load_avatar, save_avatar
    from pipelines.files import require_file
    from pipelines.image_io import load_image

    path = require_file(cfg.image, "portrait")
    photo = load_image(path, max_side=cfg.max_side)
    head = head or HeadModel()
    cache = _cache_path(photo.tobytes() + str(photo.shape).encode(), cfg)
    if cache is not None and cache.exists():
        try:
            return photo, load_avatar(cache, head, kind=PortraitAvatar)
        except HeadsplatError:
            cache.unlink(missing_ok=True)  # a stale or broken cache entry is rebuilt
    fit = fit_portrait(photo, cfg.face_index)
    avatar = build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=cfg.size)
    )
    if cache is not None:
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_avatar(avatar, cache)
    return photo, avatar


# ------------------------------------------------------------------------------------------------
# Driver → motion
def speak(text: str, out_wav: Path) -> Path:
    """Speak `text` literally into a wav with espeak-ng or flite (whichever is installed).

    The text goes to the synthesiser in a file, never on its command line, so text that starts with "-"
    ("-5 degrees", or a hostile "-f/etc/passwd") is spoken as written and never read as an option.
    """
    import shutil
    import subprocess

    if not text.strip():
        raise HeadsplatError("--text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise HeadsplatError(
            f"--text is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}: split it, or pass --audio"
        )
    if "\0" in text:
        raise HeadsplatError("--text contains a NUL character; give plain text")
    text_file = out_wav.with_suffix(".txt")
    text_file.write_text(text, encoding="utf-8")
    if shutil.which("espeak-ng"):
        cmd = ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(out_wav), "-f", str(text_file)]
    elif shutil.which("flite"):
        cmd = ["flite", "-voice", "slt", "-f", str(text_file), "-o", str(out_wav)]
    else:
        raise HeadsplatError(
            "--text needs a speech synthesiser: install espeak-ng or flite (e.g. apt-get install espeak-ng), "
            "or pass --audio"
        )
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not out_wav.exists() or out_wav.stat().st_size < 100:
        lines = (result.stderr or "no output").strip().splitlines() or ["no output"]
        raise HeadsplatError(f"speech synthesis failed: {lines[-1]}")
    return out_wav


def speech_motion(samples: np.ndarray, cfg: TalkConfig, transcript: str | None = None) -> Motion:
    """A Motion from 16 kHz speech samples with the shipped generator (the rule-based teacher when steps is 0)."""
    from pipelines.audio_to_motion import AudioToMotion

    generator = AudioToMotion.from_pretrained() if cfg.steps > 0 else AudioToMotion(None)
    return generator.generate(
        samples,
        fps=cfg.fps,
        transcript=transcript,
        seed=cfg.seed,
        steps=cfg.steps,
        emotion=cfg.emotion,
        expression_scale=cfg.expression_scale,
        pose_scale=cfg.pose_scale,
        blink_rate=cfg.blink_rate,
        still=cfg.still,
    )


def driving_motion(path: str, fps: float, progress: bool = False) -> tuple[Motion, bool]:
    """The tracked motion of a driving video, relative to the driving face's own rest, and whether it has audio."""
    from pipelines.track import track_video

    return track_video(path, fps, progress=progress, with_audio=True)


def make_motion(cfg: TalkConfig, workdir: Path) -> tuple[Motion, Path | None]:
    """The motion that drives the portrait and the audio file to mux (None for a silent video)."""
    from pipelines.audio_io import load_audio
    from pipelines.motion_io import load_motion

    drivers = [n for n in ("audio", "text", "motion", "driving") if getattr(cfg, n)]
    if len(drivers) > 1 and not (set(drivers) == {"motion", "audio"}):
        raise HeadsplatError(f"give one driver, not {' and '.join('--' + d for d in drivers)}")
    if cfg.emotion not in EMOTIONS:
        raise HeadsplatError(f"unknown --emotion {cfg.emotion!r}; choose one of {', '.join(EMOTIONS)}")
    if cfg.motion:
        motion = load_motion(cfg.motion).resample(cfg.fps)
        audio = Path(cfg.audio) if cfg.audio else None
        if audio is not None:
            seconds = len(load_audio(audio)) / 16000
            if abs(seconds - motion.duration) > 0.5:
                raise HeadsplatError(
                    f"the motion lasts {motion.duration:.1f} s but the audio {seconds:.1f} s; they do not belong together"
                )
        return motion.scaled(cfg.expression_scale, 0.0 if cfg.still else cfg.pose_scale), audio
    if cfg.driving:
        motion, has_audio = driving_motion(cfg.driving, cfg.fps, cfg.progress)
        return motion.scaled(cfg.expression_scale, 0.0 if cfg.still else cfg.pose_scale), (
            Path(cfg.driving) if has_audio else None
        )
    if cfg.text:
        audio = speak(cfg.text, workdir / "speech.wav")
    else:
        audio = Path(cfg.audio) if cfg.audio else DEFAULT_AUDIO
    samples = load_audio(audio)
    return speech_motion(samples, cfg, transcript=cfg.text), audio


# ------------------------------------------------------------------------------------------------
# Motion → frames
def render_frames(
    photo: np.ndarray, avatar: PortraitAvatar, motion: Motion, crop: bool = False, backend: str = "auto"
) -> Iterator[np.ndarray]:
    """RGB uint8 frames, one per motion frame: the full photo with the face pasted back (or the crop)."""
    if crop:
        for i in range(motion.num_frames):
            rgb = avatar.render_motion(motion, i, backend=backend)
            yield np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
        return
    feather = max(4.0, 0.02 * (avatar.crop_box[2] - avatar.crop_box[0]))
    weight = paste_weight(avatar.moving_mask, (photo.shape[1], photo.shape[0]), avatar.crop_box, feather)
    size = avatar.background.shape[1], avatar.background.shape[0]
    paster = FramePaster(photo, size, avatar.crop_box, weight)  # the mask and box stay put: set up once
    for i in range(motion.num_frames):
        rgb, alpha = avatar.render_motion(motion, i, backend=backend, layers=True)
        yield paster(rgb, alpha, avatar.background)


def check_motion_controls(cfg) -> None:
    """The checks of the motion controls every generator shares (Talk's and Avatar3D's configs)."""
    for name in ("expression_scale", "pose_scale", "blink_rate"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and 0 <= value <= 10):
            raise HeadsplatError(f"--{name.replace('_', '-')} must be a number from 0 to 10; got {value}")
    if cfg.face_index < 0:
        raise HeadsplatError(f"--face-index must be 0 or more; got {cfg.face_index}")


def check_config(cfg: TalkConfig) -> Path:
    """The output path, after the checks every Talk run makes before any work (suffix, folder, fps, size)."""
    from pipelines.cli import check_output

    out = Path(cfg.output)
    if out.suffix.lower() != ".mp4":
        raise HeadsplatError(f"the output must be an .mp4 file; got {out.name!r}")
    inputs = (cfg.image, cfg.audio, cfg.motion, cfg.driving)
    check_output(out, inputs)
    if cfg.save_motion:
        check_output(cfg.save_motion, (*inputs, out), what="--save-motion file")
    if not 1 <= cfg.fps <= 120:
        raise HeadsplatError(f"--fps must be from 1 to 120; got {cfg.fps}")
    if cfg.size is not None and not 64 <= cfg.size <= 2048:
        raise HeadsplatError(f"size must be between 64 and 2048 pixels; got {cfg.size}")
    check_motion_controls(cfg)
    if not 256 <= cfg.max_side <= 8192:
        raise HeadsplatError(f"--max-side must be between 256 and 8192 pixels; got {cfg.max_side}")
    return out


def talk(cfg: TalkConfig, on_frame: Callable[[int, int], None] | None = None) -> Path:
    """Run Talk end to end and return the written mp4's path."""
    from pipelines.motion_io import save_motion
    from pipelines.video_io import VideoWriter

    out = check_config(cfg)
    device = resolve_device(cfg.device)
    backend = "gsplat" if device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="headsplat-") as tmp:
        photo, avatar = prepare_avatar(cfg)  # the portrait first: a photo without a face fails fast
        motion, audio = make_motion(cfg, Path(tmp))
        if motion.num_frames == 0:
            raise HeadsplatError("the driver is too short to make a single frame")
        if device == "cuda":
            avatar = avatar.to("cuda")
        frames = render_frames(photo, avatar, motion, crop=cfg.crop, backend=backend)
        bar = _progress(motion.num_frames, cfg.progress)
        with VideoWriter(out, motion.fps, audio=audio) as writer:
            for i, frame in enumerate(frames):
                writer.write(frame)
                bar.update(1)
                if on_frame is not None:
                    on_frame(i + 1, motion.num_frames)
        bar.close()
        if cfg.save_motion:  # after the video: an interrupted run leaves neither file
            save_motion(motion, cfg.save_motion)
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="talk", disable=not enabled, file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# CLI
def add_motion_arguments(parser: argparse.ArgumentParser, subject: str = "portrait") -> None:
    """The flags every generator shares: drivers, motion controls, face choice, device, progress."""
    driver = parser.add_argument_group("driver (one of)")
    driver.add_argument("--audio", help="speech to lip-sync: wav, mp3, m4a, flac, ogg or a video file")
    driver.add_argument("--text", help="text to speak with espeak-ng or flite")
    driver.add_argument(
        "--motion", help="motion file (.npz, .json, Live Link Face .csv); may be combined with --audio"
    )
    driver.add_argument("--driving", help=f"video of a talking face whose motion drives the {subject}")
    parser.add_argument("--fps", type=float, default=25.0, help="frames per second (default: 25)")
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="motion diffusion sampling steps, at most 10; 0 uses the rule-based teacher (default: 3)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of head motion, blinks and gaze (default: 0)"
    )
    parser.add_argument(
        "--emotion", default="neutral", choices=EMOTIONS, help="facial emotion (default: neutral)"
    )
    parser.add_argument(
        "--expression-scale", type=float, default=1.0, help="scale of facial expression (default: 1)"
    )
    parser.add_argument("--pose-scale", type=float, default=1.0, help="scale of head movement (default: 1)")
    parser.add_argument(
        "--blink-rate", type=float, default=1.0, help="multiplier of the natural blink rate (default: 1)"
    )
    parser.add_argument("--still", action="store_true", help="keep the head still; only the face talks")
    parser.add_argument(
        "--face-index", type=int, default=0, help="which face to use, 0 = the largest (default: 0)"
    )
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to render (default: auto)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.talk",
        description="Turn a portrait and speech (or text, a motion file, a driving video) into a talking-head "
        "mp4. Without a driver the shipped speech sample is used.",
    )
    parser.add_argument(
        "-s", "--image", default=str(DEFAULT_PORTRAIT), help="portrait photo (default: the shipped one)"
    )
    parser.add_argument("-o", "--output", default="talk.mp4", help="output .mp4 (default: talk.mp4)")
    add_motion_arguments(parser, "portrait")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="render size of the face crop in pixels (default: the crop's size in the photo, at most 512)",
    )
    parser.add_argument(
        "--crop", action="store_true", help="write the square face crop instead of the full photo"
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help=f"downscale a photo longer than this on either side first; the video is at most this size "
        f"(default: {DEFAULT_MAX_SIDE})",
    )
    parser.add_argument("--save-motion", help="also write the driving motion (.npz, .json or .csv)")
    parser.add_argument(
        "--cache-dir", help="where built avatars are cached ('' disables; default ~/.cache/headsplat)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TalkConfig:
    names = {f.name for f in fields(TalkConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TalkConfig(**values, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import run_cli

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    torch.set_num_threads(1)  # numba renders in parallel; torch's own threads would only fight it
    start = time.perf_counter()

    def work() -> None:
        out = talk(cfg)
        print(f"wrote {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    return run_cli(work, interrupted="interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())

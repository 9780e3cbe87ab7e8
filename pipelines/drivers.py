"""What the generators (Talk, Avatar3D) share: a portrait, one driver and the motion controls, as config
fields and as flags, the rules a driver follows, and the `Motion` made from it.

    cfg = TalkConfig(text="Hello there")        # any GeneratorConfig
    cfg.check()                                 # before any work: one driver, text limits, controls
    motion, audio = make_motion(cfg, workdir)   # the motion, and the audio to mux (None: a silent video)

A driver is speech (`audio`), `text` to speak, a `motion` file (which may go with the audio it was made
from) or a `driving` video of a talking face. Without one, Talk speaks the shipped sample.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.controls import EMOTIONS, MAX_STEPS, MotionControls, check_fps
from models.errors import HeadsplatError
from pipelines.cli import run_cli
from pipelines.config_cli import add_config_arguments, config_from_args, flag
from pipelines.device import DEVICES
from pipelines.portrait import DEFAULT_PORTRAIT

if TYPE_CHECKING:
    from models.latent import Motion

DEFAULT_AUDIO = Path(__file__).resolve().parents[1] / "assets" / "defaults" / "speech.wav"
#: Longer text is refused (about 10 minutes of speech): synthesis and alignment grow with it. The app
#: passes its own, stricter limit to `check_drivers`.
MAX_TEXT_CHARS = 10_000
#: The config fields that are drivers, in the order their flags are listed.
DRIVERS = ("audio", "text", "motion", "driving")


@dataclass
class GeneratorConfig(MotionControls):
    """The fields Talk's and Avatar3D's configs share; each is a flag of both commands and a batch key."""

    image: str = field(
        default=str(DEFAULT_PORTRAIT), metadata=flag("-s", "--image", default_help="the shipped one")
    )
    """Portrait photo (any common image format); its largest face is used unless face_index picks another."""
    audio: str | None = None
    """Speech to lip-sync: wav, mp3, m4a, flac, ogg or a video's audio track."""
    text: str | None = None
    """Text to speak with espeak-ng or flite."""
    motion: str | None = None
    """A motion file (.npz, .json or Live Link Face .csv) to play; it may go with the audio it was made from."""
    driving: str | None = None
    """A video of a talking face whose tracked motion drives this one (its audio is kept)."""
    fps: float = 25.0
    """Frames per second of the video."""
    face_index: int = 0
    """Which face to animate when the photo has several (0 is the largest)."""
    device: str = field(default="auto", metadata=flag(choices=DEVICES))
    """Where frames are rendered: auto, cpu or cuda (cuda needs gsplat)."""
    progress: bool = field(default=True, metadata=flag(inverse="--quiet", help="No progress bars."))
    """Show progress bars (off with --quiet)."""
    # models/ knows nothing of the command line: the flags of two motion controls are completed here.
    steps: int = field(
        default=MotionControls.steps,
        metadata=flag(default_help=f"{MotionControls.steps}; at most {MAX_STEPS}"),
    )
    emotion: str = field(default=MotionControls.emotion, metadata=flag(choices=EMOTIONS))

    @property
    def has_driver(self) -> bool:
        return any(getattr(self, name) for name in DRIVERS)

    def check(self) -> None:
        """Refuse, before any work, what no generator takes: bad controls, drivers, frame rate or face index."""
        super().check()
        check_drivers(self.audio, self.text, self.motion, self.driving)
        check_fps(self.fps)
        if self.face_index < 0:
            raise HeadsplatError(f"--face-index must be 0 or more; got {self.face_index}")


# ------------------------------------------------------------------------------------------------
# Driver rules
def check_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """`text` when a synthesiser can speak it: not blank, no NUL, at most `max_chars` characters."""
    if not text.strip():
        raise HeadsplatError("the text to speak is empty")
    if len(text) > max_chars:
        raise HeadsplatError(
            f"the text has {len(text):,} characters; the most is {max_chars:,}: split it, or give speech audio"
        )
    if "\0" in text:
        raise HeadsplatError("the text contains a NUL character; give plain text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 on the command line
        raise HeadsplatError("the text is not valid UTF-8; give plain text") from None
    return text


def check_drivers(
    audio: str | None,
    text: str | None,
    motion: str | None,
    driving: str | None,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> None:
    """Refuse more than one driver (a motion file may go with its audio) and text `check_text` refuses."""
    given = [name for name, value in zip(DRIVERS, (audio, text, motion, driving)) if value]
    if len(given) > 1 and set(given) != {"motion", "audio"}:
        both = "both " if len(given) == 2 else ""
        raise HeadsplatError(f"give one driver, not {both}{', '.join(given[:-1])} and {given[-1]}")
    if text is not None:  # an explicit empty text is a mistake, not "no driver"
        check_text(text, max_text_chars)


# ------------------------------------------------------------------------------------------------
# Driver → motion
def speak(text: str, out_wav: Path) -> Path:
    """Speak `text` literally into a wav with espeak-ng or flite (whichever is installed).

    Text that starts with "-" ("-5 degrees", or a hostile "-f/etc/passwd") is spoken as written, never
    read as an option: espeak-ng reads it from a file, and flite's `-t` takes its next argument as the text.
    """
    import shutil
    import subprocess

    from pipelines.tts import no_sound_server_env

    check_text(text)
    if shutil.which("espeak-ng"):
        text_file = out_wav.with_suffix(".txt")
        text_file.write_text(text, encoding="utf-8")
        cmd = ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(out_wav), "-f", str(text_file)]
    elif shutil.which("flite"):
        cmd = ["flite", "-voice", "slt", "-t", text, "-o", str(out_wav)]  # -t: the next argument is the text
    else:
        raise HeadsplatError(
            "--text needs a speech synthesiser: install espeak-ng or flite (e.g. apt-get install espeak-ng), "
            "or pass --audio"
        )
    result = subprocess.run(
        cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, env=no_sound_server_env()
    )
    if result.returncode != 0 or not out_wav.exists() or out_wav.stat().st_size < 100:
        lines = (result.stderr or "no output").strip().splitlines() or ["no output"]
        raise HeadsplatError(f"speech synthesis failed: {lines[-1]}")
    return out_wav


def speech_motion(samples: np.ndarray, cfg: GeneratorConfig, transcript: str | None = None) -> Motion:
    """A Motion at cfg.fps from 16 kHz speech samples [N] with the shipped generator (the rule-based teacher
    when steps is 0)."""
    from models.motion_diffusion import GenerationControls
    from pipelines.audio_to_motion import AudioToMotion

    generator = AudioToMotion.from_pretrained() if cfg.steps > 0 else AudioToMotion(None)
    controls = GenerationControls.from_controls(cfg)
    if transcript and cfg.steps == 0:  # only the teacher aligns phones to a transcript
        try:
            return generator.generate(samples, fps=cfg.fps, transcript=transcript, controls=controls)
        except HeadsplatError as err:  # words outside the dictionary (names, "f/etc"): recognise instead
            warnings.warn(f"{err}; the phones are recognised from the speech instead", stacklevel=2)
    return generator.generate(samples, fps=cfg.fps, controls=controls)


def driving_motion(path: str, fps: float, progress: bool = False) -> tuple[Motion, bool]:
    """The tracked motion of a driving video, relative to the driving face's own rest, and whether it has audio."""
    from pipelines.track import track_video

    return track_video(path, fps, progress=progress, with_audio=True)


def make_motion(cfg: GeneratorConfig, workdir: Path) -> tuple[Motion, Path | None]:
    """The motion that drives the portrait and the audio file to mux (None for a silent video).

    `cfg` has passed `cfg.check()`; a spoken text's wav is written into `workdir`.
    """
    from pipelines.audio_io import load_audio
    from pipelines.motion_io import load_motion

    def controlled(motion: Motion) -> Motion:  # a motion made elsewhere takes the scales and `still` too
        return motion.scaled(cfg.expression_scale, 0.0 if cfg.still else cfg.pose_scale)

    if cfg.motion:
        motion = load_motion(cfg.motion).resample(cfg.fps)
        audio = Path(cfg.audio) if cfg.audio else None
        if audio is not None:
            seconds = len(load_audio(audio)) / 16000
            if abs(seconds - motion.duration) > 0.5:
                raise HeadsplatError(
                    f"the motion lasts {motion.duration:.1f} s but the audio {seconds:.1f} s; they do not belong together"
                )
        return controlled(motion), audio
    if cfg.driving:
        motion, has_audio = driving_motion(cfg.driving, cfg.fps, cfg.progress)
        return controlled(motion), Path(cfg.driving) if has_audio else None
    if cfg.text:
        audio = speak(cfg.text, workdir / "speech.wav")
    else:
        audio = Path(cfg.audio) if cfg.audio else DEFAULT_AUDIO
    return speech_motion(load_audio(audio), cfg, transcript=cfg.text), audio


# ------------------------------------------------------------------------------------------------
# The generators' command line
def generator_parser(cls: type[GeneratorConfig], prog: str, description: str) -> argparse.ArgumentParser:
    """A generator's parser with every flag made from its config `cls`: -s and -o, the flags every
    generator shares (the drivers in a group of their own), then its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    shared = [f.name for f in fields(GeneratorConfig)]
    add_config_arguments(parser, cls, only=("image", "output"))
    drivers = parser.add_argument_group("driver (one of)")
    add_config_arguments(parser, cls, only=shared, skip=("image",), groups=dict.fromkeys(DRIVERS, drivers))
    add_config_arguments(parser, cls, skip=(*shared, "output"))
    return parser


def run_generator(
    parser: argparse.ArgumentParser,
    cls: type[GeneratorConfig],
    run: Callable[[GeneratorConfig], object],
    argv: list[str] | None,
    interrupted: str,
) -> int:
    """A generator's `main`: flags → config, `run` it (it returns what it wrote), report, exit code."""
    cfg = config_from_args(cls, parser.parse_args(argv))
    import torch  # after the flags: `--help` and bad flags never load it

    torch.set_num_threads(1)  # numba renders in parallel; torch's own threads would only fight it
    start = time.perf_counter()

    def work() -> None:
        written = run(cfg)
        print(f"wrote {written} in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    return run_cli(work, interrupted=interrupted)

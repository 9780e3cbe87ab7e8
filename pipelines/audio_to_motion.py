"""Speech → `Motion`: the Talk pipeline's audio front half, offline and streaming, plus the teacher fallback.

    python -m pipelines.audio_to_motion --audio speech.wav --out motion.npz --seed 3 --emotion happy
    python -m pipelines.audio_to_motion --audio speech.wav --out motion.csv --steps 0 --transcript "..."

`--steps 0` skips the diffusion model and uses the rule-based teacher (phones from pocketsphinx).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.audio import (
    SAMPLE_RATE,
    FeatureStream,
    align_phones,
    block_energy_db,
    is_silent,
    recognize_phones,
    resample_to,
    speech_features,
    speech_level_db,
)
from models.controls import EMOTIONS, MAX_FPS, MAX_STEPS, MIN_FPS, GenerationControls, check_fps
from models.errors import HeadsplatError
from models.latent import Motion
from pipelines.cli import check_output, run_cli
from pipelines.config_cli import add_config_arguments, config_from_args, flag
from pipelines.device import DEVICES
from pipelines.files import require_file
from pipelines.lazy import bind, bind_unless_main
from pipelines.motion_io import MOTION_SUFFIXES

if TYPE_CHECKING:  # bound by pipelines.lazy (see _HEAVY)
    import torch

    from models.motion_diffusion import (
        MODEL_POSE_GAIN,
        BlinkKeeper,
        MotionDenoiser,
        MotionModelConfig,
        generate_frames,
        postprocess,
    )
    from models.visemes import teacher_motion

#: Names this module uses that import torch or scipy (see pipelines.lazy): `--help` answers at once.
_HEAVY = {
    "torch": "torch",
    "MODEL_POSE_GAIN": "models.motion_diffusion:MODEL_POSE_GAIN",
    "BlinkKeeper": "models.motion_diffusion:BlinkKeeper",
    "MotionDenoiser": "models.motion_diffusion:MotionDenoiser",
    "MotionModelConfig": "models.motion_diffusion:MotionModelConfig",
    "generate_frames": "models.motion_diffusion:generate_frames",
    "postprocess": "models.motion_diffusion:postprocess",
    "teacher_motion": "models.visemes:teacher_motion",
}
bind_unless_main(globals(), _HEAVY)

#: The shipped default model (trained by pipelines.train_motion on the synthetic corpus).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "motion_diffusion.safetensors"
#: Offline windows: 72 new frames + 8 look-ahead (+ 8 context) = 88 frames = 3.5 s at 25 fps.
OFFLINE_CHUNK, OFFLINE_LOOKAHEAD = 72, 8
#: Streaming windows: 8 new frames (320 ms) + 2 look-ahead (80 ms).
STREAM_CHUNK, STREAM_LOOKAHEAD = 8, 2
#: Audio is analysed in blocks of this many seconds, so memory does not grow with the audio's length.
FEATURE_BLOCK_S = 20.0
#: Motion frame rates a motion file may have: Talk's upper limit; below one frame a second a motion
#: is a still (1e-9 fps made a one-frame file).
#: Torch threads of the command line tool (see main).
TORCH_THREADS = 1


def load_model(path: str | os.PathLike | None = None) -> MotionDenoiser:
    """A MotionDenoiser from `name.safetensors` + `name.json` (config and training notes); default: shipped weights."""
    from safetensors.torch import load_file

    weights = Path(path) if path is not None else DEFAULT_WEIGHTS
    if weights.is_dir():
        weights = weights / "motion_diffusion.safetensors"
    weights = require_file(weights, "motion model weights")
    config_path = weights.with_suffix(".json")
    require_file(config_path, "motion model config")
    try:
        meta = json.loads(config_path.read_text())
        config = MotionModelConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise HeadsplatError(f"{config_path.name} is not a motion model config ({err})") from err
    net = MotionDenoiser(config)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise HeadsplatError(f"cannot read {weights.name}: {err}") from err
    missing, unexpected = net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise HeadsplatError(
            f"{weights.name} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return net.eval()


class AudioToMotion:
    """Speech samples → Motion with the motion diffusion model; `steps=0` uses the rule-based teacher."""

    def __init__(self, net: MotionDenoiser | None) -> None:
        self.net = net

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> AudioToMotion:
        """Load weights from `path` (a .safetensors file or a folder); None: the shipped default."""
        return cls(load_model(path))

    @property
    def model_fps(self) -> float:
        return self.net.config.fps if self.net is not None else 25.0

    @staticmethod
    def _controls(controls: GenerationControls | None, changes: dict) -> GenerationControls:
        """`controls` (default: GenerationControls()) with `changes`, checked."""
        controls = dataclasses.replace(controls or GenerationControls(), **changes)
        check_controls(controls)
        return controls

    def _feature_blocks(self, audio: np.ndarray) -> Iterator[tuple[np.ndarray, bool]]:
        """Features of whole-clip loudness reference, in bounded-memory blocks."""
        level = speech_level_db(block_energy_db(audio))
        stream = FeatureStream(self.model_fps, level_db=level)
        block = int(FEATURE_BLOCK_S * SAMPLE_RATE)
        for start in range(0, audio.size, block):
            yield stream.push(audio[start : start + block]), False
        yield stream.finish(), True

    def generate(
        self,
        audio: np.ndarray,  # [N] mono samples
        sample_rate: int = SAMPLE_RATE,
        fps: float = 25.0,
        transcript: str | None = None,
        controls: GenerationControls | None = None,
        **changes,
    ) -> Motion:
        """Motion at `fps` covering the audio, made with `controls` (their fields may also be given by
        keyword: `generate(audio, seed=3)`). `transcript` is used only by the teacher (steps=0)."""
        controls = self._controls(controls, changes)
        check_fps(fps)
        audio = resample_to(audio, sample_rate, SAMPLE_RATE)
        if audio.size == 0:
            raise HeadsplatError("the audio is empty: give at least a fraction of a second of sound")
        if controls.steps == 0 or self.net is None:
            motion = teacher_from_audio(audio, transcript, controls, self.model_fps)
        else:
            parts, activity = [], []
            blocks = self._activity_tap(self._feature_blocks(audio), activity)
            with torch.inference_mode():
                for frames in generate_frames(self.net, blocks, controls, OFFLINE_CHUNK, OFFLINE_LOOKAHEAD):
                    parts.append(frames)
            values = np.concatenate(parts)
            blinks = BlinkKeeper(controls.seed, controls.blink_rate, self.model_fps)
            gate = np.concatenate(activity)[: values.shape[0]]
            motion = postprocess(values, gate, controls, self.model_fps, blinks, MODEL_POSE_GAIN)
        return motion if abs(fps - motion.fps) < 1e-9 else motion.resample(fps)

    @staticmethod
    def _activity_tap(
        blocks: Iterable[tuple[np.ndarray, bool]], sink: list
    ) -> Iterator[tuple[np.ndarray, bool]]:
        for values, last in blocks:
            sink.append(values[:, -1].copy())  # the voice-activity column
            yield values, last

    def stream(
        self,
        audio_blocks: Iterable[np.ndarray] | np.ndarray,  # 16 kHz mono blocks (or one array to split)
        controls: GenerationControls | None = None,
        chunk: int = STREAM_CHUNK,
        lookahead: int = STREAM_LOOKAHEAD,
        level_db: float | None = None,
        **changes,
    ) -> Iterator[Motion]:
        """Motion chunks at the model's fps (25) as audio arrives; each needs `lookahead` + 2 frames of future audio.

        `controls` as in `generate`. The loudness reference adapts to the speech heard so far unless
        `level_db` fixes it.
        """
        if self.net is None:
            raise HeadsplatError(
                "streaming needs the diffusion model; load one with AudioToMotion.from_pretrained"
            )
        controls = self._controls(controls, changes)
        if isinstance(audio_blocks, np.ndarray):
            whole = audio_blocks
            step = int(SAMPLE_RATE * chunk / self.model_fps)
            audio_blocks = (whole[i : i + step] for i in range(0, whole.size, step))
        feature_stream = FeatureStream(self.model_fps, level_db=level_db)

        def blocks() -> Iterator[tuple[np.ndarray, bool]]:
            for samples in audio_blocks:
                yield feature_stream.push(np.asarray(samples, np.float32)), False
            yield feature_stream.finish(), True

        activity: list[np.ndarray] = []
        used = 0
        blink_keeper = BlinkKeeper(controls.seed, controls.blink_rate, self.model_fps)
        with torch.inference_mode():
            for frames in generate_frames(
                self.net, self._activity_tap(blocks(), activity), controls, chunk, lookahead
            ):
                gate = np.concatenate(activity)[used : used + frames.shape[0]]
                used += frames.shape[0]
                yield postprocess(frames, gate, controls, self.model_fps, blink_keeper, MODEL_POSE_GAIN)


def teacher_from_audio(audio: np.ndarray, transcript: str | None, controls: GenerationControls,
                       fps: float = 25.0) -> Motion:  # fmt: skip
    """The rule-based fallback: phones (aligned to `transcript`, else recognised) → teacher motion."""
    feats = speech_features(audio, SAMPLE_RATE, fps)
    if is_silent(audio):
        phones = []
    elif transcript:
        phones = align_phones(audio, transcript)
    else:
        phones = recognize_phones(audio)
    motion = teacher_motion(
        phones, feats.num_frames, fps, feats.energy_db, feats.f0_hz, feats.activity, seed=controls.seed,
        emotion=controls.emotion,
        emotion_strength=controls.emotion_strength if controls.emotion != "neutral" else 0.0,
        blink_rate=controls.blink_rate,
    )  # fmt: skip
    return postprocess(
        np.concatenate([motion.expression, motion.rotation, motion.translation], 1),
        np.ones(motion.num_frames, np.float32),
        dataclasses.replace(controls, voice_gate=False),
        fps,
    )


@dataclasses.dataclass
class AudioToMotionCommand(GenerationControls):
    """The motion controls plus the files and rate of `python -m pipelines.audio_to_motion`; each field is
    one of its flags but `voice_gate` (always on)."""

    audio: str = dataclasses.field(kw_only=True)
    """Speech: wav/mp3/m4a/flac/ogg or a video's audio track."""
    out: str = dataclasses.field(kw_only=True)
    """Motion file to write: .npz, .json or Live Link Face .csv."""
    csv_translation: bool = False
    """With a .csv motion file: also write headsplat's HeadTranslationX/Y/Z columns (cm) after the 61
    values Live Link Face writes (importers made for the app's files may expect exactly those)."""
    weights: str | None = dataclasses.field(
        default=None, metadata=flag(default_help="the shipped one in weights/")
    )
    """Motion model .safetensors."""
    fps: float = dataclasses.field(
        default=25.0, metadata=flag(default_help=f"25, from {MIN_FPS:g} to {MAX_FPS:g}")
    )
    """Frame rate of the motion."""
    transcript: str | None = None
    """Text of the speech (teacher only: forced alignment)."""
    device: str = dataclasses.field(default="cpu", metadata=flag(choices=DEVICES))
    """Accepted for a uniform CLI: the model is small and CPU-fast, generation always runs on the CPU."""
    # models/ knows nothing of the command line: the flags of two motion controls are completed here.
    steps: int = dataclasses.field(
        default=GenerationControls.steps,
        metadata=flag(default_help=f"{GenerationControls.steps}; at most {MAX_STEPS}"),
    )
    emotion: str = dataclasses.field(default=GenerationControls.emotion, metadata=flag(choices=EMOTIONS))

    @property
    def controls(self) -> GenerationControls:
        """The motion controls alone."""
        return GenerationControls(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationControls)}
        )


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m pipelines.audio_to_motion`: every flag is a field of AudioToMotionCommand."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.audio_to_motion", description=__doc__.split("\n\n")[0]
    )
    files = ("audio", "out", "weights", "fps")
    last = ("transcript", "device")
    add_config_arguments(parser, AudioToMotionCommand, only=files)
    add_config_arguments(parser, AudioToMotionCommand, skip=(*files, *last, "voice_gate"))
    add_config_arguments(parser, AudioToMotionCommand, only=last)
    return parser


def check_controls(controls: GenerationControls) -> None:
    """GenerationControls.check for the model and the teacher alike (steps 0 picks the teacher, which takes
    the same emotion and scales)."""
    (controls if controls.steps != 0 else dataclasses.replace(controls, steps=1)).check()


def _run(args: AudioToMotionCommand) -> int:
    from pipelines.audio_io import load_audio
    from pipelines.motion_io import save_motion

    # Every check of the flags and the output before the audio is decoded or the model loaded.
    check_fps(args.fps)
    controls = args.controls
    check_controls(controls)
    out = check_output(args.out, [args.audio, args.weights], "motion file")
    if out.suffix.lower() not in MOTION_SUFFIXES:
        raise HeadsplatError(f"motion files end in {', '.join(MOTION_SUFFIXES)}; got {out.name!r}")
    audio = load_audio(args.audio)
    model = AudioToMotion(None) if args.steps == 0 else AudioToMotion.from_pretrained(args.weights)
    start = time.perf_counter()
    motion = model.generate(audio, SAMPLE_RATE, fps=args.fps, transcript=args.transcript, controls=controls)
    elapsed = time.perf_counter() - start
    save_motion(motion, args.out, csv_translation=args.csv_translation)
    print(f"wrote {args.out}: {motion.num_frames} frames at {motion.fps:g} fps in {elapsed:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = config_from_args(AudioToMotionCommand, build_parser().parse_args(argv))
    bind(globals(), _HEAVY)
    # The 1.2M-parameter model multiplies small matrices, where extra threads mostly wait on each other.
    # On a 2-core machine, assets/defaults/speech.wav (6.7 s) took 1.10-1.16 s to generate with one
    # torch thread and 1.19-1.23 s with two, up to 2.3 s with two while other work ran; with every core
    # of a loaded machine the issue measured RTF 0.38 against 0.065. One thread it is, as in Talk.
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        return run_cli(lambda: _run(args), interrupted="interrupted; nothing was written")
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests, the app) keep their own


if __name__ == "__main__":
    raise SystemExit(main())

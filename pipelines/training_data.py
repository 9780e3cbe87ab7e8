"""Training data for the motion model: utterances as per-frame arrays (`Clip`), from a synthetic corpus,
(audio, motion) pairs, or talking videos tracked into motion. `pipelines.train_motion` trains on them."""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.audio import Phone, speech_features
from models.errors import HeadsplatError
from models.latent import Motion
from models.motion_diffusion import GenerationControls, motion_to_array
from models.visemes import EMOTIONS, teacher_motion
from pipelines.audio_io import AUDIO_SUFFIXES, VIDEO_SUFFIXES, load_audio
from pipelines.files import require_file
from pipelines.motion_io import MOTION_SUFFIXES, load_motion


@dataclass
class Clip:
    """One training or evaluation utterance, already turned into per-frame arrays."""

    features: np.ndarray  # [T, D] audio features at the motion fps
    motion: np.ndarray  # [T, 59] raw motion frames
    emotion: np.ndarray  # [5] emotion one-hot times strength
    blink_rate: float  # blink-rate multiplier the motion was made with (1 when unknown)
    name: str
    phones: list[Phone] = field(default_factory=list)  # known phones (synthetic corpus), for evaluation


# --------------------------------------------------------------------------------------------------
# Data
def _emotion_vector(emotion: str, strength: float) -> np.ndarray:
    # What generation refuses is a corpus error: found here, not in the evaluation after training.
    try:
        GenerationControls(emotion=emotion, emotion_strength=strength).check()
    except HeadsplatError as err:
        raise HeadsplatError(f"in the training data: {err}") from err
    vec = np.zeros(len(EMOTIONS), np.float32)
    if emotion == "neutral":
        vec[0] = 1.0
    else:
        vec[EMOTIONS.index(emotion)] = strength
    return vec


def make_clip(audio: np.ndarray, motion: Motion, name: str, fps: float, emotion: str = "neutral",
              strength: float = 0.0, blink_rate: float = 1.0, phones: Sequence[Phone] = ()) -> Clip:  # fmt: skip
    """Pair 16 kHz samples [N] with a motion (resampled to `fps`, cut or padded to the audio's length)."""
    feats = speech_features(audio, fps=fps)
    if abs(motion.fps - fps) > 1e-6:
        motion = motion.resample(fps)
    values = motion_to_array(motion)
    t = feats.num_frames
    if values.shape[0] < t:  # hold the last pose over a short tail of audio
        values = np.concatenate([values, np.repeat(values[-1:], t - values.shape[0], axis=0)])
    return Clip(feats.values, values[:t], _emotion_vector(emotion, strength), blink_rate, name, list(phones))


def corpus_clips(
    root: Path, fps: float, relabel: bool = False, progress: bool = True
) -> tuple[list[Clip], list[Clip]]:
    """(training, held-out) clips of a synthetic corpus folder (its manifest.jsonl).

    `relabel` recomputes each clip's motion with the current teacher from the stored phones and
    controls (after a teacher change there is no need to synthesise and align the speech again).
    """
    from tqdm import tqdm

    manifest = require_file(root / "manifest.jsonl", "corpus manifest")
    train, held = [], []
    # The bar is closed on the way out, Ctrl-C included: no half-drawn bar trails the CLI's last line.
    with tqdm(read_jsonl(manifest), desc="reading corpus", disable=not progress) as entries:
        for line, entry in entries:
            missing = [key for key in ("id", "audio", "motion")[: 2 if relabel else 3] if key not in entry]
            if missing:
                raise HeadsplatError(f"{manifest} line {line} lacks {', '.join(map(repr, missing))}")
            clip = _corpus_clip(root, entry, fps, relabel)
            (held if entry.get("split") == "held_out" else train).append(clip)
    return train, held


def _corpus_clip(root: Path, entry: dict, fps: float, relabel: bool) -> Clip:
    """The clip of one corpus manifest entry: its audio with its stored or recomputed motion."""
    audio = load_audio(root / entry["audio"])
    controls = entry.get("controls", {})
    phones = [Phone(label, start, end) for label, start, end in entry.get("phones", [])]
    if relabel:
        feats = speech_features(audio, fps=fps)
        motion = teacher_motion(
            phones, feats.num_frames, fps, feats.energy_db, feats.f0_hz, None, seed=controls.get("seed", 0),
            emotion=controls.get("emotion", "neutral"), emotion_strength=controls.get("emotion_strength", 0.0),
            blink_rate=controls.get("blink_rate", 1.0),
        )  # fmt: skip
    else:
        motion = load_motion(root / entry["motion"])
    return make_clip(
        audio, motion, entry["id"], fps, controls.get("emotion", "neutral"),
        controls.get("emotion_strength", 0.0), controls.get("blink_rate", 1.0), phones,
    )  # fmt: skip


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines manifest; a HeadsplatError naming the
    file and line for text that is not UTF-8, a line that is not JSON, or a line that is not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise HeadsplatError(f"{path} is not a text file (JSON Lines are UTF-8 text)") from err
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise HeadsplatError(
                f"{path} line {number}: invalid JSON ({err.msg} at column {err.colno}); "
                f"write one JSON object per line"
            ) from err
        except RecursionError as err:  # json's C parser recurses once per nesting level
            raise HeadsplatError(f"{path} line {number}: JSON nested too deeply") from err
        if not isinstance(row, dict):
            raise HeadsplatError(f"{path} line {number}: expected a JSON object, got a {type(row).__name__}")
        rows.append((number, row))
    return rows


def _manifest_pairs(path: Path) -> list[tuple[Path, Path]]:
    root = path.parent
    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
    elif path.suffix.lower() == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = [(reader.line_num, row) for row in reader]
        except (UnicodeDecodeError, csv.Error) as err:
            raise HeadsplatError(f"{path} is not a readable CSV manifest ({err})") from err
    else:
        raise HeadsplatError(f"manifest {path.name} must be .jsonl or .csv with 'audio' and 'motion' columns")
    pairs = []
    for line, row in rows:
        audio, motion = row.get("audio"), row.get("motion")
        if not (isinstance(audio, str) and audio and isinstance(motion, str) and motion):
            raise HeadsplatError(
                f"{path} line {line}: give the 'audio' and 'motion' file names (relative to the manifest)"
            )
        pairs.append((root / audio, root / motion))
    return pairs


def pair_files(path: Path) -> list[tuple[Path, Path]]:
    """(audio, motion) file pairs from a folder (matched by file stem) or a manifest."""
    if path.is_file():
        return _manifest_pairs(path)
    if not path.is_dir():
        raise HeadsplatError(f"pairs not found: {path}")
    motions = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in MOTION_SUFFIXES}
    pairs = []
    for p in sorted(path.iterdir()):
        if p.suffix.lower() in AUDIO_SUFFIXES + VIDEO_SUFFIXES and p.stem in motions:
            pairs.append((p, motions[p.stem]))
    if not pairs:
        raise HeadsplatError(f"no audio file in {path} has a motion file of the same name (.npz/.json/.csv)")
    return pairs


def paired_clips(path: Path, fps: float) -> list[Clip]:
    """Clips from real (audio, motion) pairs; their emotion is neutral and blink rate 1."""
    return [make_clip(load_audio(a), load_motion(m), a.stem, fps) for a, m in pair_files(path)]


def resolve_tracker(spec: str) -> Callable[[Path], Motion]:
    """`package.module:function` → the callable that tracks a video file into a Motion."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise HeadsplatError(f"--tracker must look like package.module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise HeadsplatError(f"cannot load tracker {spec!r}: {err}") from err


def video_clips(folder: Path, track: Callable[[Path], Motion], fps: float) -> list[Clip]:
    """Clips from talking videos: motion from `track(video)`, audio from the video's own track."""
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise HeadsplatError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
    clips = []
    for video in videos:
        motion = track(video)
        if not isinstance(motion, Motion):
            raise HeadsplatError(
                f"the tracker returned {type(motion).__name__} for {video.name}, not a Motion"
            )
        clips.append(make_clip(load_audio(video), motion, video.stem, fps))
    return clips

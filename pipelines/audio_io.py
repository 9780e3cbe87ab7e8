"""The one audio loader: wav/mp3/m4a/flac/ogg files and the audio track of videos, as mono float32 at 16 kHz.

soundfile reads the formats libsndfile knows (wav, flac, ogg) without a subprocess; everything else (mp3,
m4a/aac, video containers) is decoded by the ffmpeg binary that imageio-ffmpeg ships, so no system
ffmpeg is needed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from models.audio import stream_resampler
from models.errors import HeadsplatError
from pipelines.files import atomic_output, require_file

SAMPLE_RATE = 16_000
#: Longer inputs are refused before decoding (2 h of 16 kHz float32 is ~460 MB).
MAX_SECONDS = 2 * 3600.0
_SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".wma")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    try:
        import imageio_ffmpeg
    except ImportError as err:  # a core dependency, but say what to do if it is missing
        raise HeadsplatError("decoding this audio needs imageio-ffmpeg: pip install imageio-ffmpeg") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


#: Frames read (and resampled) at a time: memory stays bounded by the 16 kHz result, whatever the file's
#: rate and channel count (a 20-minute 48 kHz stereo wav would take 0.9 GB as one float array).
_BLOCK_FRAMES = 1 << 18


def _read_soundfile(path: Path, target_sr: int, max_seconds: float) -> np.ndarray | None:
    """Mono samples at `target_sr` via libsndfile, or None when it cannot read the file (ffmpeg gets a try).

    The file is read block by block: each block is checked for NaN/inf, mixed to mono and fed through the
    project's one resampler (models.audio.stream_resampler), so memory is bounded by the result.
    """
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError):
        return None
    if info.samplerate <= 0 or info.channels <= 0:
        return None
    if info.frames / info.samplerate > max_seconds:
        raise HeadsplatError(
            f"{path.name} is {info.frames / info.samplerate / 60:.0f} min long; the limit is "
            f"{max_seconds / 60:.0f} min: cut it into parts (or raise max_seconds)"
        )
    resampler = stream_resampler(info.samplerate, target_sr) if info.samplerate != target_sr else None
    pieces: list[np.ndarray] = []
    try:
        with soundfile.SoundFile(str(path)) as fh:
            while True:
                block = fh.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                last = block.shape[0] < _BLOCK_FRAMES
                if not np.all(np.isfinite(block)):
                    raise HeadsplatError(f"{path.name} has NaN or infinite samples: the file is corrupt")
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
                pieces.append(mono.copy() if resampler is None else resampler.resample_chunk(mono, last=last))
                if last:
                    break
    except (RuntimeError, soundfile.LibsndfileError):
        return None
    return np.concatenate(pieces).astype(np.float32, copy=False)


def _read_ffmpeg(path: Path, target_sr: int, max_seconds: float) -> np.ndarray:
    # -t reads one second past the limit so that "too long" can be told apart from "exactly the limit".
    # An absolute "file:" path: a name like "concat:a|b" or "-x" is never read as a protocol or an option.
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-v",
        "error",
        "-i",
        "file:" + os.path.abspath(path),
        "-vn",
        "-sn",
        "-dn",
    ]
    cmd += ["-t", f"{max_seconds + 1:.3f}", "-ac", "1", "-ar", str(target_sr), "-f", "f32le", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    stderr = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        message = stderr.splitlines()
        reason = message[-1] if message else f"ffmpeg exit code {proc.returncode}"
        if "does not contain any stream" in stderr or "matches no streams" in stderr:
            reason = "it has no audio track"
        raise HeadsplatError(
            f"cannot read audio from {path.name}: {reason}. Use a wav/mp3/m4a/flac/ogg or video file"
        )
    samples = np.frombuffer(proc.stdout, np.float32).copy()
    if samples.size / target_sr > max_seconds:
        raise HeadsplatError(
            f"{path.name} is longer than the limit of {max_seconds / 60:.0f} min: cut it into parts "
            "(or raise max_seconds)"
        )
    return samples


def load_audio(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: float = MAX_SECONDS
) -> np.ndarray:
    """Mono float32 samples [N] in [-1, 1] at `sample_rate` Hz from an audio or video file.

    Raises HeadsplatError for a missing, empty, corrupt, audio-less, too long or zero-length file.
    Silence is valid input (it gives idle motion); `models.audio.is_silent` tells it apart.
    """
    path = require_file(path, "audio file")
    samples = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        samples = _read_soundfile(path, sample_rate, max_seconds)
    if samples is None:
        samples = _read_ffmpeg(path, sample_rate, max_seconds)
    if samples.size < sample_rate // 100:
        raise HeadsplatError(
            f"{path.name} holds no audio samples (under 10 ms of sound): use a longer recording"
        )
    if not np.all(np.isfinite(samples)):
        raise HeadsplatError(f"{path.name} has NaN or infinite samples: the file is corrupt")
    return np.clip(samples, -1.0, 1.0)


def save_wav(samples: np.ndarray, path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono float samples [N] as 16-bit PCM wav, atomically."""
    import soundfile

    path = Path(path)
    with atomic_output(path) as tmp:
        soundfile.write(
            str(tmp),
            np.clip(np.asarray(samples, np.float32), -1, 1),
            sample_rate,
            subtype="PCM_16",
            format="WAV",
        )
    return path

"""Speech front end on sample arrays: features at the motion frame rate, voice activity, and timed phones.

Features are log-mel spectra at 100 Hz, four sub-frames stacked per motion frame (so a 25 fps frame sees
40 ms of spectral detail at 10 ms resolution), plus energy, pitch and voicing. Phones come from
pocketsphinx, whose English acoustic model ships in its wheel: free phone recognition (allphone) without
a transcript, forced alignment with one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from models.errors import HeadsplatError

SAMPLE_RATE = 16_000
#: Spectral analysis rate: 10 ms hops, the rate pocketsphinx aligns at.
ANALYSIS_HZ = 100
#: Log-mel sub-frames stacked into one motion frame.
SUB_FRAMES = 4


@dataclass(frozen=True)
class FeatureConfig:
    """How audio becomes per-frame conditioning for the motion model."""

    sample_rate: int = SAMPLE_RATE
    """Input sample rate in Hz; other rates are resampled."""
    n_mels: int = 32
    """Mel bands per sub-frame."""
    n_fft: int = 512
    """FFT size in samples (32 ms at 16 kHz)."""
    fmin: float = 60.0
    """Lowest mel frequency in Hz."""
    fmax: float = 7600.0
    """Highest mel frequency in Hz."""
    pitch_fmin: float = 60.0
    """Lowest F0 searched, Hz."""
    pitch_fmax: float = 420.0
    """Highest F0 searched, Hz."""

    @property
    def dim(self) -> int:
        """Feature width per motion frame: stacked log-mels + energy, delta energy, log-F0, voicing, activity."""
        return self.n_mels * SUB_FRAMES + 5


@dataclass
class SpeechFeatures:
    """Per-motion-frame audio descriptors."""

    values: np.ndarray  # [T, D] model conditioning (see FeatureConfig.dim)
    energy_db: np.ndarray  # [T] frame loudness in dB relative to the clip's speech level
    f0_hz: np.ndarray  # [T] pitch in Hz, 0 where unvoiced
    activity: np.ndarray  # [T] voice activity in [0, 1]
    fps: float  # motion frame rate

    @property
    def num_frames(self) -> int:
        return int(self.values.shape[0])


def num_motion_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    """Frames of motion that cover `num_samples` of audio at `fps` (at least 1 for non-empty audio)."""
    return max(1, math.ceil(num_samples / sample_rate * fps - 1e-6)) if num_samples else 0


def _check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise HeadsplatError(
            f"audio must be mono samples [N], got shape {list(audio.shape)}; mix it down first"
        )
    if sample_rate <= 0:
        raise HeadsplatError(f"sample rate must be positive, got {sample_rate}")
    if not np.all(np.isfinite(audio)):
        raise HeadsplatError("audio has NaN or infinite samples")
    return audio


def resample_to(audio: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Mono samples [N] at `sample_rate` → [M] at `target` Hz."""
    audio = _check_audio(audio, sample_rate)
    if sample_rate == target or audio.size == 0:
        return audio
    import librosa

    return librosa.resample(audio, orig_sr=sample_rate, target_sr=target).astype(np.float32)


def analysis_frames(audio: np.ndarray, config: FeatureConfig = FeatureConfig()) -> dict[str, np.ndarray]:
    """100 Hz analysis of 16 kHz samples [N]: log-mel [F, n_mels] (dB), rms energy (dB), F0 (Hz), voicing, flatness."""
    import librosa

    hop = config.sample_rate // ANALYSIS_HZ
    pad = np.pad(audio, (0, hop))  # one spare hop so the last partial frame is analysed
    # power_to_db with a fixed ref keeps levels absolute, so streaming chunks agree with offline runs.
    mel = librosa.feature.melspectrogram(
        y=pad, sr=config.sample_rate, n_fft=config.n_fft, hop_length=hop, n_mels=config.n_mels,
        fmin=config.fmin, fmax=config.fmax, power=2.0, center=True,
    )  # fmt: skip
    mel_db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T.astype(np.float32)
    rms = librosa.feature.rms(y=pad, frame_length=config.n_fft, hop_length=hop, center=True)[0]
    energy_db = (20 * np.log10(np.maximum(rms, 1e-5))).astype(np.float32)
    flatness = librosa.feature.spectral_flatness(y=pad, n_fft=config.n_fft, hop_length=hop, center=True)[
        0
    ].astype(np.float32)
    # YIN (not pYIN): pYIN's Viterbi decoding costs ~100x more and real time matters here.
    frame_length = 1024
    f0 = librosa.yin(
        pad, fmin=config.pitch_fmin, fmax=config.pitch_fmax, sr=config.sample_rate,
        frame_length=frame_length, hop_length=hop, center=True, trough_threshold=0.1,
    )  # fmt: skip
    # Voicing from periodicity: the normalised autocorrelation at the YIN period.
    frames = librosa.util.frame(np.pad(pad, frame_length // 2), frame_length=frame_length, hop_length=hop)
    n = min(frames.shape[1], f0.shape[0], mel_db.shape[0])
    lag = np.clip(np.round(config.sample_rate / f0[:n]).astype(int), 1, frame_length // 2 - 1)
    win = frame_length // 2
    idx = np.arange(win)
    a = frames[idx[:, None], np.arange(n)[None, :]]
    b = frames[idx[:, None] + lag[None, :], np.arange(n)[None, :]]
    corr = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-9)
    voicing = np.clip(corr, 0, 1).astype(np.float32)
    voicing[energy_db[:n] < -55] = 0.0
    return {
        "mel_db": mel_db[:n],
        "energy_db": energy_db[:n],
        "f0": np.where(voicing > 0.5, f0[:n], 0.0).astype(np.float32),
        "voicing": voicing,
        "flatness": flatness[:n],
    }


def speech_level_db(energy_db: np.ndarray) -> float:
    """A robust speech loudness (dB): the 90th percentile of frame energy, floored at -50 dB."""
    if energy_db.size == 0:
        return -50.0
    return float(max(np.percentile(energy_db, 90), -50.0))


def voice_activity(analysis: dict[str, np.ndarray], level_db: float) -> np.ndarray:
    """Speech presence per 10 ms frame in [0, 1]: loud enough, and voiced or spectrally shaped (not noise)."""
    energy = analysis["energy_db"]
    loud = 1 / (1 + np.exp(-(energy - max(level_db - 30.0, -60.0)) / 3.0))
    # Broadband noise is spectrally flat and aperiodic; speech has harmonics or fricative formant shape.
    # Unvoiced consonants need no cue of their own: the hold below bridges them from the vowels around.
    shaped = np.clip(1.0 - analysis["flatness"] / 0.05, 0, 1)
    periodic = np.clip((analysis["voicing"] - 0.6) / 0.25, 0, 1)
    raw = loud * np.maximum(periodic, 0.5 * shaped * (energy > -45))
    # Speech is voiced every ~200 ms; fill the gaps of unvoiced consonants, drop isolated blips.
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    held = maximum_filter1d(raw, size=21)
    return np.clip(uniform_filter1d(held, size=9), 0, 1).astype(np.float32)


def _frame_sample(values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of 100 Hz rows [F, C] at `times` (seconds) → [len(times), C]."""
    pos = np.clip(times * ANALYSIS_HZ, 0, values.shape[0] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, values.shape[0] - 1)
    w = (pos - lo)[:, None].astype(np.float32)
    return values[lo] * (1 - w) + values[hi] * w


def speech_features(
    audio: np.ndarray,  # [N] mono samples
    sample_rate: int = SAMPLE_RATE,
    fps: float = 25.0,
    num_frames: int | None = None,
    level_db: float | None = None,
    config: FeatureConfig = FeatureConfig(),
) -> SpeechFeatures:
    """Features for `num_frames` motion frames at `fps` (default: the frames the audio covers).

    `level_db` fixes the loudness reference (streaming passes the level of what it has heard so far);
    by default it is measured on the clip, which makes features independent of recording gain.
    """
    audio = resample_to(audio, sample_rate, config.sample_rate)
    if num_frames is None:
        num_frames = num_motion_frames(audio.size, config.sample_rate, fps)
    if audio.size < config.n_fft:
        audio = np.pad(audio, (0, config.n_fft - audio.size))
    an = analysis_frames(audio, config)
    level = speech_level_db(an["energy_db"]) if level_db is None else float(level_db)
    activity = voice_activity(an, level)
    # Normalise by the speech level so gain does not matter; clip the floor so silence looks the same
    # however quiet the recording is.
    mel = np.maximum(an["mel_db"] - level, -60.0) / 20.0 + 1.0
    energy = np.maximum(an["energy_db"] - level, -60.0)
    d_energy = np.gradient(energy) if energy.size > 1 else np.zeros_like(energy)
    f0 = an["f0"]
    log_f0 = np.where(f0 > 0, np.log2(np.maximum(f0, 1.0) / 150.0), 0.0)
    times = np.arange(num_frames) / fps
    offsets = (np.arange(SUB_FRAMES) - (SUB_FRAMES - 1) / 2) / (SUB_FRAMES * fps)
    sub = _frame_sample(mel, (times[:, None] + offsets[None, :]).reshape(-1))
    stacked = sub.reshape(num_frames, SUB_FRAMES * config.n_mels)
    scalars = np.stack([energy / 20.0 + 1.0, d_energy / 5.0, log_f0, an["voicing"], activity], axis=1)
    per_frame = _frame_sample(scalars.astype(np.float32), times)
    values = np.concatenate([stacked, per_frame], axis=1).astype(np.float32)
    f0_frames = _frame_sample(f0[:, None], times)[:, 0]
    return SpeechFeatures(
        values=values,
        energy_db=_frame_sample(energy[:, None], times)[:, 0].astype(np.float32),
        f0_hz=np.where(f0_frames > 30, f0_frames, 0.0).astype(np.float32),
        activity=per_frame[:, 4].astype(np.float32),
        fps=float(fps),
    )


def is_silent(audio: np.ndarray, threshold_db: float = -50.0) -> bool:
    """True when the loudest 10 ms of `audio` [N] is below `threshold_db` dBFS (digital or near silence)."""
    audio = np.asarray(audio, np.float32)
    if audio.size == 0:
        return True
    hop = 160
    n = audio.size // hop * hop
    frames = audio[:n].reshape(-1, hop) if n else audio[None, :]
    peak = float(np.sqrt((frames**2).mean(1)).max())
    return 20 * math.log10(max(peak, 1e-10)) < threshold_db


# --------------------------------------------------------------------------------------------------
# Phones (pocketsphinx)
@dataclass(frozen=True)
class Phone:
    """One timed phone: an ARPAbet label without stress digits ('SIL' for silence), times in seconds."""

    label: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


ARPABET = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY",
    "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y",
    "Z", "ZH",
)  # fmt: skip
VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})


def _model_paths() -> dict[str, str]:
    try:
        from pocketsphinx import get_model_path
    except ImportError as err:
        raise HeadsplatError("phone recognition needs pocketsphinx: pip install pocketsphinx") from err
    root = get_model_path()
    return {
        "hmm": os.path.join(root, "en-us", "en-us"),
        "dict": os.path.join(root, "en-us", "cmudict-en-us.dict"),
        "allphone": os.path.join(root, "en-us", "en-us-phone.lm.bin"),
    }


def _pcm16(audio: np.ndarray, sample_rate: int) -> bytes:
    audio = resample_to(audio, sample_rate, SAMPLE_RATE)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _clean_label(name: str) -> str | None:
    label = name.upper().rstrip("012")
    if label in ARPABET:
        return label
    if label in ("SIL", "<SIL>", "</S>", "<S>", "+NSN+", "+SPN+", "+BREATH+", "+COUGH+", "+SMACK+", "+UM+"):
        return "SIL"
    return None


def _merge(phones: list[Phone]) -> list[Phone]:
    """Join neighbouring silences; drop zero-length entries."""
    out: list[Phone] = []
    for p in phones:
        if p.end <= p.start:
            continue
        if out and p.label == "SIL" and out[-1].label == "SIL":
            out[-1] = Phone("SIL", out[-1].start, p.end)
        else:
            out.append(p)
    return out


def recognize_phones(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[Phone]:
    """Timed phones [Phone] from speech samples [N] without a transcript (pocketsphinx allphone decoding)."""
    from pocketsphinx import Decoder

    paths = _model_paths()
    decoder = Decoder(
        hmm=paths["hmm"], allphone=paths["allphone"], lw=2.0, beam=1e-20, pbeam=1e-20,
        samprate=SAMPLE_RATE, loglevel="FATAL",
    )  # fmt: skip
    decoder.start_utt()
    decoder.process_raw(_pcm16(audio, sample_rate), full_utt=True)
    decoder.end_utt()
    phones = []
    for seg in decoder.seg():
        label = _clean_label(seg.word)
        if label is not None:
            phones.append(Phone(label, seg.start_frame / 100.0, (seg.end_frame + 1) / 100.0))
    return _merge(phones)


_CMUDICT: dict[str, str] | None = None


def _cmudict() -> dict[str, str]:
    global _CMUDICT
    if _CMUDICT is None:
        entries: dict[str, str] = {}
        with open(_model_paths()["dict"], encoding="utf-8") as fh:
            for line in fh:
                word, _, pron = line.strip().partition(" ")
                entries.setdefault(word, pron)
        _CMUDICT = entries
    return _CMUDICT


def transcript_words(text: str) -> list[str]:
    """Words of a transcript that pocketsphinx can align (lower case, letters and apostrophes)."""
    import re

    words = re.findall(r"[a-z']+", text.lower().replace("’", "'"))
    return [w.strip("'") for w in words if w.strip("'")]


def align_phones(audio: np.ndarray, transcript: str, sample_rate: int = SAMPLE_RATE) -> list[Phone]:
    """Timed phones [Phone] by forced alignment of `transcript` to speech samples [N] (pocketsphinx).

    Words missing from CMUdict are an error naming them.
    """
    from pocketsphinx import Decoder

    words = transcript_words(transcript)
    if not words:
        raise HeadsplatError("the transcript has no words to align; leave it out to recognise phones instead")
    dictionary = _cmudict()
    unknown = sorted({w for w in words if w not in dictionary})
    if unknown:
        raise HeadsplatError(
            f"transcript words not in the pronunciation dictionary: {', '.join(unknown[:8])}; "
            "spell them out phonetically or leave the transcript out"
        )
    paths = _model_paths()
    decoder = Decoder(hmm=paths["hmm"], dict=paths["dict"], lm=None, samprate=SAMPLE_RATE, loglevel="FATAL")
    pcm = _pcm16(audio, sample_rate)
    decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    decoder.set_alignment()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    try:
        alignment = decoder.get_alignment()
    except (RuntimeError, ValueError) as err:
        raise HeadsplatError(
            f"could not align the transcript to the audio ({err}); is it the right text?"
        ) from err
    phones = []
    # The alignment iterator reuses its entries: read each word while it is current.
    for word in alignment:
        for ph in word:
            label = _clean_label(ph.name)
            if label is not None:
                phones.append(Phone(label, ph.start / 100.0, (ph.start + ph.duration) / 100.0))
    if not any(p.label != "SIL" for p in phones):
        raise HeadsplatError("could not align the transcript to the audio; is it the right text?")
    return _merge(phones)

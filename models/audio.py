"""Speech front end on sample arrays: features at the motion frame rate, voice activity, and timed phones.

Features are log-mel spectra at 100 Hz, four sub-frames stacked per motion frame (so a 25 fps frame sees
40 ms of spectral detail at 10 ms resolution), plus energy, pitch and voicing. Phones come from
pocketsphinx, whose English acoustic model ships in its wheel: free phone recognition (allphone) without
a transcript, forced alignment with one.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
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


def stream_resampler(sample_rate: int, target: int = SAMPLE_RATE):
    """The project's one resampler, streaming: `.resample_chunk(float32 [n], last=False)` → samples at
    `target` Hz. soxr's high-quality setting, the one librosa.resample uses by default."""
    import soxr

    return soxr.ResampleStream(sample_rate, target, 1, dtype="float32", quality="HQ")


def resample_to(audio: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Mono samples [N] at `sample_rate` → [M] at `target` Hz (`stream_resampler` in one chunk)."""
    audio = _check_audio(audio, sample_rate)
    if sample_rate == target or audio.size == 0:
        return audio
    return stream_resampler(sample_rate, target).resample_chunk(audio.astype(np.float32), last=True)


@functools.lru_cache(maxsize=4)
def _mel_basis(config: FeatureConfig) -> np.ndarray:
    """Mel filter bank [n_mels, n_fft // 2 + 1]; cached because streaming analyses many small blocks."""
    import librosa

    return librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax
    )


def analysis_frames(audio: np.ndarray, config: FeatureConfig = FeatureConfig()) -> dict[str, np.ndarray]:
    """100 Hz analysis of 16 kHz samples [N]: log-mel [F, n_mels] (dB), rms energy (dB), F0 (Hz), voicing, flatness."""
    import librosa

    hop = config.sample_rate // ANALYSIS_HZ
    pad = np.pad(audio, (0, hop))  # one spare hop so the last partial frame is analysed
    # One STFT feeds the mel bands, the energy and the flatness.
    spectrum = np.abs(librosa.stft(y=pad, n_fft=config.n_fft, hop_length=hop, center=True)) ** 2
    mel_basis = _mel_basis(config)
    # power_to_db with a fixed ref keeps levels absolute, so streaming chunks agree with offline runs.
    mel_db = librosa.power_to_db(mel_basis @ spectrum, ref=1.0, amin=1e-10, top_db=None).T.astype(np.float32)
    rms = librosa.feature.rms(S=np.sqrt(spectrum), frame_length=config.n_fft)[0]
    energy_db = (20 * np.log10(np.maximum(rms, 1e-5))).astype(np.float32)
    flatness = librosa.feature.spectral_flatness(S=spectrum, power=1.0)[0].astype(np.float32)
    # YIN (not pYIN: its Viterbi decoding costs ~100x more) at 50 Hz, interpolated to 100 Hz: pitch moves
    # slowly and YIN is the front end's most expensive step.
    frame_length, pitch_hop = 640, 2 * hop
    f0_coarse = librosa.yin(
        pad, fmin=config.pitch_fmin, fmax=config.pitch_fmax, sr=config.sample_rate,
        frame_length=frame_length, hop_length=pitch_hop, center=True, trough_threshold=0.1,
    )  # fmt: skip
    # Voicing from periodicity: the normalised autocorrelation at the YIN period.
    frames = librosa.util.frame(
        np.pad(pad, frame_length // 2), frame_length=frame_length, hop_length=pitch_hop
    )
    m = min(frames.shape[1], f0_coarse.shape[0])
    win = frame_length // 2
    lag = np.clip(np.round(config.sample_rate / f0_coarse[:m]).astype(int), 1, frame_length - win - 1)
    idx = np.arange(win)
    cols = np.arange(m)[None, :]
    x = frames[idx[:, None], cols]
    y = frames[idx[:, None] + lag[None, :], cols]
    corr = (x * y).sum(0) / np.sqrt((x * x).sum(0) * (y * y).sum(0) + 1e-9)
    n = mel_db.shape[0]
    fine = np.arange(n) / 2.0
    f0 = np.interp(fine, np.arange(m), f0_coarse[:m]).astype(np.float32)
    voicing = np.interp(fine, np.arange(m), np.clip(corr, 0, 1)).astype(np.float32)
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
    periodic = np.clip((analysis["voicing"] - 0.7) / 0.2, 0, 1)
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
    if audio.size < 1024:  # YIN's frame length
        audio = np.pad(audio, (0, 1024 - audio.size))
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
    # Digital silence (exact zeros, as synthesisers write) breaks pocketsphinx's search ("Final result does
    # not match the grammar"); a fixed -70 dBFS dither keeps its log energies finite.
    dither = np.random.default_rng(0).standard_normal(audio.size).astype(np.float32) * 3e-4
    return (np.clip(audio + dither, -1, 1) * 32767).astype("<i2").tobytes()


def _clean_label(name: str) -> str | None:
    label = name.upper().rstrip("012")
    if label in ARPABET:
        return label
    if label in ("SIL", "<SIL>", "</S>", "<S>", "+NSN+", "+SPN+", "+BREATH+", "+COUGH+", "+SMACK+", "+UM+"):
        return "SIL"
    return None


def merge_silences(phones: list[Phone]) -> list[Phone]:
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


def pad_silence(phones: list[Phone], start: float, end: float) -> list[Phone]:
    """`phones` with silence filling [start, first phone) and [last phone, end) (no phones: one silence).

    Nothing is merged: follow with `merge_silences` where neighbouring silences should become one.
    """
    if not phones:
        return [Phone("SIL", start, end)] if end > start else []
    out = list(phones)
    if out[0].start > start:
        out.insert(0, Phone("SIL", start, out[0].start))
    if out[-1].end < end:
        out.append(Phone("SIL", out[-1].end, end))
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
    return merge_silences(phones)


_CMUDICT: dict[str, str] | None = None


def _cmudict() -> dict[str, str]:
    """pocketsphinx's CMUdict: word (alternates as 'word(2)') → space-separated phones."""
    global _CMUDICT
    if _CMUDICT is None:
        entries: dict[str, str] = {}
        with open(_model_paths()["dict"], encoding="utf-8") as fh:
            for line in fh:
                word, _, pron = line.strip().partition(" ")
                entries.setdefault(word, pron.strip())
        _CMUDICT = entries
    return _CMUDICT


def transcript_words(text: str) -> list[str]:
    """Words of a transcript that pocketsphinx can align (lower case, letters and apostrophes)."""
    import re

    words = re.findall(r"[a-z']+", text.lower().replace("’", "'"))
    return [w.strip("'") for w in words if w.strip("'")]


_ALIGNER = None


#: Typical relative phone durations, for splitting a word's span when phone-level alignment fails.
_RELATIVE_DURATION = {**{v: 2.0 for v in VOWELS}, "AW": 2.6, "AY": 2.6, "EY": 2.3, "OW": 2.3, "OY": 2.6,
                      "P": 0.9, "B": 0.8, "T": 0.8, "D": 0.7, "K": 0.9, "G": 0.8, "HH": 0.7}  # fmt: skip


def _split_word(phones: list[str], start: int, end: int) -> list[tuple[str, int, int]]:
    """[(phone, start, duration)] sharing the frames [start, end) by typical phone durations."""
    weights = np.array([_RELATIVE_DURATION.get(p, 1.0) for p in phones])
    bounds = start + np.round(np.concatenate([[0], np.cumsum(weights)]) / weights.sum() * (end - start))
    bounds = bounds.astype(int)
    return [(p, int(b0), int(max(b1 - b0, 1))) for p, b0, b1 in zip(phones, bounds[:-1], bounds[1:])]


def _run_alignment(pcm: bytes, text: str) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """pocketsphinx alignment of 16-bit PCM to `text`: [(word, [(phone, start, duration)])], 10 ms units.

    The word pass (a grammar of the transcript with optional pauses) comes first; the phone pass then
    aligns HMM states inside it. The phone pass fails on some utterances with pauses ("Alignment failed
    in frame N"); then each word's phones share its aligned span by typical phone durations.
    """
    from pocketsphinx import Decoder

    paths = _model_paths()
    # Wide beams: the default ones lose the path on fast synthetic speech.
    decoder = Decoder(
        hmm=paths["hmm"], dict=paths["dict"], lm=None, samprate=SAMPLE_RATE, loglevel="FATAL",
        beam=1e-80, pbeam=1e-80, wbeam=1e-60,
    )  # fmt: skip
    decoder.set_align_text(text)
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    segments = [(seg.word, seg.start_frame, seg.end_frame + 1) for seg in (decoder.seg() or [])]
    try:
        decoder.set_alignment()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        # Read the alignment while the decoder is alive (its iterator points into the decoder's memory).
        return [(w.name, [(ph.name, ph.start, ph.duration) for ph in w]) for w in decoder.get_alignment()]
    except RuntimeError as err:
        # Loud, not silent: the phones are then estimated inside each aligned word, a coarser timing.
        warnings.warn(
            f"phone-level alignment failed ({err}); phones are spread over each word's aligned span",
            stacklevel=3,
        )
    dictionary = _cmudict()
    words = []
    for word, start, end in segments:
        if word.startswith("<") or word.startswith("["):
            words.append((word, [("SIL", start, max(end - start, 1))]))
        else:
            pron = dictionary.get(word, dictionary.get(word.split("(")[0], "")).split()
            words.append((word, _split_word(pron, start, end) if pron else []))
    return words


def align_phones(audio: np.ndarray, transcript: str, sample_rate: int = SAMPLE_RATE) -> list[Phone]:
    """Timed phones [Phone] by forced alignment of `transcript` to speech samples [N] (pocketsphinx).

    Words missing from CMUdict are an error naming them.
    """
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
    pcm = _pcm16(audio, sample_rate)
    try:
        alignment = _run_alignment(pcm, " ".join(words))
    except RuntimeError as err:
        raise HeadsplatError(
            f"could not align the transcript to the audio ({err}); is it the right text?"
        ) from err
    aligned_words = [w.split("(")[0] for w, _ in alignment if not w.startswith(("<", "["))]
    if aligned_words != words:
        # The search stopped early and kept a partial path: the timings would be wrong.
        raise HeadsplatError(
            f"could only align {len(aligned_words)} of {len(words)} transcript words; is it the right text?"
        )
    phones = []
    for _, word_phones in alignment:
        for name, start, duration in word_phones:
            label = _clean_label(name)
            if label is not None:
                phones.append(Phone(label, start / 100.0, (start + duration) / 100.0))
    return merge_silences(phones)


def block_energy_db(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cheap 10 ms frame energies (dB) of samples [N] without an STFT; for loudness references."""
    hop = sample_rate // ANALYSIS_HZ
    n = audio.size // hop * hop
    if n == 0:
        return np.full(1, -100.0, np.float32)
    rms = np.sqrt(np.mean(audio[:n].reshape(-1, hop).astype(np.float32) ** 2, axis=1))
    return (20 * np.log10(np.maximum(rms, 1e-5))).astype(np.float32)


class FeatureStream:
    """Speech features computed block by block with bounded memory, for streaming and for long audio.

    Push 16 kHz samples in any block sizes; `push` returns features [n, D] for the frames whose audio
    context is complete (all but the last `right_margin` frames), `finish` returns the rest. Each block is
    analysed with `left_margin` frames of earlier audio, so features match a whole-clip analysis away
    from the clip's ends. Without a fixed `level_db`, the loudness reference is the speech level of the
    last 30 s heard.
    """

    def __init__(self, fps: float = 25.0, level_db: float | None = None, left_margin: int = 12,
                 right_margin: int = 2, config: FeatureConfig = FeatureConfig()) -> None:  # fmt: skip
        spf = config.sample_rate / fps
        if abs(spf - round(spf)) > 1e-9:
            raise HeadsplatError(
                f"streaming features need a whole number of samples per frame; fps {fps} gives {spf}"
            )
        self.fps, self.config = fps, config
        self.samples_per_frame = int(round(spf))
        self.fixed_level = level_db
        self.left_margin, self.right_margin = left_margin, right_margin
        self.audio = np.zeros(0, np.float32)  # kept from frame `self.offset - left_margin` on
        self.offset = 0  # first frame not yet emitted
        self.base = 0  # absolute frame index of self.audio[0]
        self.energies = np.zeros(0, np.float32)  # last 30 s of 10 ms energies
        self.total_samples = 0

    def _level(self) -> float:
        return self.fixed_level if self.fixed_level is not None else speech_level_db(self.energies)

    def _emit(self, stop_frame: int) -> np.ndarray:
        count = stop_frame - self.offset
        if count <= 0:
            return np.zeros((0, self.config.dim), np.float32)
        # Analyse from the left margin to the end of what has been heard; keep the rows asked for.
        first = self.offset - self.base
        feats = speech_features(
            self.audio, self.config.sample_rate, self.fps, num_frames=first + count, level_db=self._level(),
            config=self.config,
        )  # fmt: skip
        out = feats.values[first:]
        self.offset = stop_frame
        drop_frames = max(0, self.offset - self.left_margin - self.base)
        self.audio = self.audio[drop_frames * self.samples_per_frame :]
        self.base += drop_frames
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Features [n, D] of the frames completed by these 16 kHz samples [N]."""
        samples = _check_audio(samples, self.config.sample_rate)
        self.audio = np.concatenate([self.audio, samples])
        self.total_samples += samples.size
        self.energies = np.concatenate([self.energies, block_energy_db(samples, self.config.sample_rate)])
        self.energies = self.energies[-30 * ANALYSIS_HZ :]
        heard_frames = self.total_samples // self.samples_per_frame
        return self._emit(heard_frames - self.right_margin)

    def finish(self) -> np.ndarray:
        """Features [n, D] of the remaining frames (up to the end of the audio)."""
        total = num_motion_frames(self.total_samples, self.config.sample_rate, self.fps)
        return self._emit(total)

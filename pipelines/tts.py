"""Speech synthesis with exact phone timings: espeak-ng (through its C library) and flite (its CLI).

A synthesiser knows when each phone it speaks begins and ends, so its own timings are the exact labels a
lip-sync model should learn from; forced alignment of the finished audio only approximates them (and
pocketsphinx's phone pass fails on about a third of synthetic voices). Both engines are optional system
programs (`apt install espeak-ng flite`); nothing of them ships with headsplat.

    audio, phones = espeak_speak("Bob bought a map.", "en-us+f2", rate=170, pitch=50)
    audio, phones = flite_speak("Bob bought a map.", "slt", stretch=1.1)

Phones come back as ARPAbet `Phone`s ('SIL' for pauses) on the 16 kHz audio's time axis.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from models.audio import SAMPLE_RATE, Phone, merge_silences, pad_silence, resample_to
from models.errors import HeadsplatError


def no_sound_server_env() -> dict[str, str]:
    """The environment for a synthesiser's command line: the espeak-ng CLI opens a PulseAudio client even
    when it only writes a wav or lists voices, which leaves runtime files in $HOME and $TMPDIR; a server
    address that cannot exist keeps it from touching anything."""
    return {**os.environ, "PULSE_SERVER": "/nonexistent/headsplat-no-sound-server"}


# --------------------------------------------------------------------------------------------------
# flite: `-psdur` prints "label:end_time" per segment (CMU phone set, lower case).
FLITE_LABELS = {"ax": "AH", "axr": "ER", "dx": "D", "el": "L", "em": "M", "en": "N", "ix": "IH", "nx": "N",
                "hv": "HH", "pau": "SIL", "h#": "SIL", "brth": "SIL"}  # fmt: skip


def flite_phones(printed: str, duration: float) -> list[Phone]:
    """Phones from flite's `-psdur` output ("pau:0.193 b:0.224 ..."), clipped to the audio's `duration` (s).

    flite's diphone voices (kal, kal16) cut the final pause short by ~0.12 s; their labels still start at 0.
    """
    phones: list[Phone] = []
    start = 0.0
    for token in printed.split():
        name, _, end_text = token.rpartition(":")
        try:
            end = float(end_text)
        except ValueError as err:
            raise HeadsplatError(f"unexpected flite segment {token!r}") from err
        label = FLITE_LABELS.get(name, name.upper())
        if label not in _ARPABET_OR_SIL:
            raise HeadsplatError(f"unknown flite phone {name!r}")
        end = min(end, duration)
        if end > start:
            phones.append(Phone(label, start, end))
        start = max(start, end)
    return merge_silences(pad_silence(phones, 0.0, duration)) if phones else []


@functools.cache
def flite_voices() -> tuple[str, ...]:
    """The voices the installed flite offers (it would silently fall back to its default for others)."""
    if shutil.which("flite") is None:
        raise HeadsplatError("flite is not installed (apt install flite)")
    listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    return tuple(listed.split(":", 1)[-1].split())


def flite_speak(
    text: str, voice: str = "slt", stretch: float = 1.0, f0_mean: float | None = None
) -> tuple[np.ndarray, list[Phone]]:
    """(float32 mono audio at 16 kHz, timed ARPAbet phones) of `text` spoken by flite `voice`.

    `stretch` scales durations (>1 is slower); `f0_mean` sets the mean pitch in Hz (the voice's own if None).
    """
    from pipelines.audio_io import load_audio

    if voice not in flite_voices():
        raise HeadsplatError(f"flite has no voice {voice!r} (it has: {', '.join(flite_voices()) or 'none'})")
    cmd = ["flite", "-voice", voice, "-psdur", "--setf", f"duration_stretch={stretch:.3f}"]
    if f0_mean is not None:
        cmd += ["--setf", f"int_f0_target_mean={f0_mean:.0f}"]
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "flite.wav"
        # `-t` takes the next argument as the text whatever it looks like ("-f/etc/passwd" is spoken, not
        # opened; tested). Not `-f FILE`: flite reads a file sentence by sentence, each on its own timeline.
        proc = subprocess.run(
            [*cmd, "-t", text, "-o", str(wav_path)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0 or not wav_path.exists():
            raise HeadsplatError(f"flite {voice} failed: {proc.stderr.strip()[:200]}")
        audio = load_audio(wav_path)
    return audio, flite_phones(proc.stdout, audio.size / SAMPLE_RATE)


# --------------------------------------------------------------------------------------------------
# espeak-ng: phoneme events from the synthesis callback (espeakINITIALIZE_PHONEME_EVENTS).
#: espeak-ng's English phoneme mnemonics → ARPAbet (several dialect variants map to one US phone).
ESPEAK_LABELS = {
    # consonants
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "f": "F", "v": "V", "T": "TH", "D": "DH",
    "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "m": "M", "n": "N", "N": "NG", "l": "L",
    "r": "R", "w": "W", "j": "Y", "tS": "CH", "dZ": "JH", "t#": "D", "d#": "D", "n-": "N", "l-": "L",
    "r-": "R", "x": "K", "?": "T", "@L": "L", "W": "W", "C": "HH", "j/": "Y", "l/": "L", "l/2": "L",
    "z/2": "Z", "s2": "S", "z#": "Z", "R": "R", "*": "D", "m-": "M", "tS#": "CH", "t[": "T", "d[": "D",
    ";": "Y",  # the glide linking "the" to a vowel ("the old")
    # vowels
    "a": "AE", "a#": "AH", "A:": "AA", "A@": "AA", "aa": "AE", "A": "AA", "a2": "AH", "A#": "AA",
    "aI": "AY", "aI@": "AY", "aI3": "AY", "aU": "AW", "aU@": "AW", "@": "AH", "@2": "AH", "@5": "AH",
    "@#": "AH", "3": "ER", "3:": "ER", "@r": "ER", "e@": "EH", "E": "EH", "E2": "EH", "E3": "EH",
    "e": "EH", "eI": "EY", "i": "IY", "i:": "IY", "i@": "IY", "i@3": "IY", "I": "IH", "I#": "IH",
    "I2": "IH", "0": "AA", "0#": "AA", "O": "AO", "O:": "AO", "O@": "AO", "o@": "AO", "OI": "OY",
    "oU": "OW", "o": "OW", "@U": "OW", "oU#": "OW", "u:": "UW", "U": "UH", "U@": "UH", "u@": "UW",
    "V": "AH", "u": "UW", "y": "UW", "IR": "IH", "VR": "AH", "3:r": "ER", "e#": "EH", "i#": "IY",
}  # fmt: skip
_ESPEAK_PAUSES = ("_", "||")
_ARPABET_OR_SIL = frozenset(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH "
    "SIL".split()
)


def espeak_label(mnemonic: str) -> str:
    """ARPAbet label of one espeak-ng English phoneme mnemonic; raises on one it does not know."""
    if mnemonic in ESPEAK_LABELS:
        return ESPEAK_LABELS[mnemonic]
    if not mnemonic or mnemonic.startswith(_ESPEAK_PAUSES):
        return "SIL"
    stripped = mnemonic.rstrip("#0123456789")
    if stripped in ESPEAK_LABELS:
        return ESPEAK_LABELS[stripped]
    raise HeadsplatError(f"unknown espeak-ng phoneme {mnemonic!r}")


class _EspeakEvent(ctypes.Structure):
    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", _Id),
    ]  # fmt: skip


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)
_EVENT_END_OF_LIST, _EVENT_PHONEME = 0, 7
_AUDIO_OUTPUT_SYNCHRONOUS, _INIT_PHONEME_EVENTS, _INIT_DONT_EXIT, _CHARS_UTF8 = 2, 0x0001, 0x8000, 1
_RATE, _PITCH = 1, 3


class _Espeak:
    """The process-wide espeak-ng library in synchronous mode (its state is global; one call at a time)."""

    _lock = threading.Lock()
    _instance: _Espeak | None = None

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as err:
            raise HeadsplatError("espeak-ng's library is not installed (apt install espeak-ng)") from err
        # Without DONT_EXIT, a failed initialisation (no espeak-ng-data) would end the whole process.
        options = _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
        # Initialising opens a PulseAudio client even for synchronous output (runtime files in $HOME and
        # $TMPDIR when XDG_RUNTIME_DIR is unset): point it at a server that cannot exist while it does.
        previous = os.environ.get("PULSE_SERVER")
        os.environ["PULSE_SERVER"] = no_sound_server_env()["PULSE_SERVER"]
        try:
            self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options)
        finally:
            if previous is None:
                del os.environ["PULSE_SERVER"]
            else:
                os.environ["PULSE_SERVER"] = previous
        if self.sample_rate <= 0:
            raise HeadsplatError("espeak-ng failed to initialise (is espeak-ng-data installed?)")
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # kept referenced for the library's lifetime
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Espeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav, num_samples, events) -> int:  # noqa: ANN001 (ctypes pointers)
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.id.string.decode("ascii", "replace"), int(event.sample)))
            i += 1
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """(int16 samples at `sample_rate`, [(mnemonic, start sample)]) of `text`."""
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise HeadsplatError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise HeadsplatError(f"espeak-ng synthesis failed (status {status})")
            self.lib.espeak_Synchronize()
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return audio, list(self._events)


def espeak_speak(
    text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50
) -> tuple[np.ndarray, list[Phone]]:
    """(float32 mono audio at 16 kHz, timed ARPAbet phones) of `text` spoken by espeak-ng `voice`.

    `voice` may carry a variant ("en-us+f2"); `rate` is words per minute, `pitch` 0-99.
    """
    engine = _Espeak.get()
    samples, events = engine.speak(text, voice, rate, pitch)
    if samples.size == 0:
        raise HeadsplatError(f"espeak-ng produced no audio for {text!r}")
    sr = engine.sample_rate
    audio = resample_to(samples.astype(np.float32) / 32768.0, sr, SAMPLE_RATE)
    duration = audio.size / SAMPLE_RATE
    phones: list[Phone] = []
    for k, (mnemonic, start) in enumerate(events):
        end = events[k + 1][1] if k + 1 < len(events) else samples.size
        phones.append(Phone(espeak_label(mnemonic), start / sr, min(end / sr, duration)))
    return audio, merge_silences(include_stop_closures(audio, pad_silence(phones, 0.0, duration)))


# --------------------------------------------------------------------------------------------------
_UNVOICED_STOPS = ("P", "T", "K", "CH")


def include_stop_closures(audio: np.ndarray, phones: list[Phone], max_share: float = 0.7) -> list[Phone]:
    """Move each unvoiced stop's start back over the closure silence that precedes its burst.

    espeak-ng reports a /p t k/ at its release; the silent closure before it (lips already shut for /p/)
    is counted in the previous phone. The closure is the run of 5 ms frames before the burst that lie
    20 dB or more below the previous phone's loudest frame, at most `max_share` of that phone. A /p b/
    after a pause also takes up to 50 ms of the pause (the lips close before the release).
    """
    hop = SAMPLE_RATE // 200
    n = audio.size // hop
    if n == 0:
        return phones
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    out = list(phones)
    for i in range(1, len(out)):
        stop, prev = out[i], out[i - 1]
        if stop.label in ("P", "B") and prev.label == "SIL":
            # After a pause the lips shut before the burst too: give the stop up to 50 ms of the pause.
            boundary = max(prev.start + 0.5 * prev.duration, stop.start - 0.05)
            out[i - 1], out[i] = Phone("SIL", prev.start, boundary), Phone(stop.label, boundary, stop.end)
            continue
        if stop.label not in _UNVOICED_STOPS or prev.label == "SIL":
            continue
        # Frames wholly before the burst: the one holding the burst is loud and would stop the search.
        lo, hi = int(prev.start * 200), min(int(stop.start * 200), n)
        if hi - lo < 2:
            continue
        floor = energy[lo:hi].max() - 20.0
        k = hi
        limit = hi - int(max_share * (hi - lo))
        while k > limit and energy[k - 1] < floor:
            k -= 1
        if k < hi:
            boundary = k / 200
            out[i - 1] = Phone(prev.label, prev.start, boundary)
            out[i] = Phone(stop.label, boundary, stop.end)
    return out

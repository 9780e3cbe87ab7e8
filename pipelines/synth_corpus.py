"""Build a synthetic (speech, motion) corpus: many TTS voices read varied sentences; the teacher labels them.

Each utterance is synthesised by espeak-ng or flite (festival too when installed) with a random rate and
pitch, resampled to 16 kHz, sometimes mixed with background noise, labelled with the phone timings the
synthesiser itself reports (`pipelines.tts`; festival, which reports none, is forced-aligned with
pocketsphinx), and turned into a `Motion` by the coarticulation teacher with a random seed,
emotion and blink rate. Some voices are held out for evaluation. A few clips are non-speech noise or
silence labelled with idle motion, so that the model learns not to move its lips for noise.

    python -m pipelines.synth_corpus --out data/motion_corpus --clips 700
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from models.audio import (
    SAMPLE_RATE,
    Phone,
    align_phones,
    merge_silences,
    pad_silence,
    resample_to,
    speech_features,
)
from models.controls import MAX_FPS, MIN_FPS
from models.errors import HeadsplatError
from models.visemes import EMOTIONS, teacher_motion
from pipelines.audio_io import load_audio, save_wav
from pipelines.cli import check_writable_folder, run_cli
from pipelines.config_cli import add_config_arguments, config_from_args, flag
from pipelines.device import DEVICES
from pipelines.files import atomic_output
from pipelines.motion_io import save_motion
from pipelines.tts import espeak_speak, flite_speak, flite_voices, no_sound_server_env

# --------------------------------------------------------------------------------------------------
# Sentences: a small grammar over common words (all in CMUdict), heavy on lip-visible sounds.
_SUBJECTS = (
    "the man", "my brother", "a woman", "the people", "our team", "his mother", "the old farmer", "a child",
    "the teacher", "my friend", "your father", "the pilot", "the baker", "a young boy", "the doctor", "we",
    "they", "she", "he", "i", "you", "the members", "most of them", "the big dog", "a small bird",
)  # fmt: skip
_VERBS = (
    "bought", "found", "made", "moved", "played", "brought", "pushed", "painted", "fixed", "watched",
    "opened", "wanted", "helped", "built", "picked", "followed", "measured", "remembered", "loved",
    "showed", "saw", "took", "kept", "carried", "washed", "visited", "described", "mentioned", "shared",
)  # fmt: skip
_OBJECTS = (
    "a map of the moon", "the blue boat", "some fresh bread", "the broken window", "five apples",
    "a pair of shoes", "the morning paper", "a very old photo", "the baby's blanket", "a warm coffee",
    "the big box", "my phone", "a few pictures", "the food", "a new movie", "the purple flowers",
    "a bottle of milk", "the map", "the whole room", "a beautiful painting", "the wooden bridge",
    "a simple problem", "the main plan", "her brown bag", "a bunch of bananas", "the farm", "many boxes",
    "the film", "your book", "a wave", "the voice", "the music", "an umbrella", "the puppy", "his wife",
)  # fmt: skip
_ADVERBIALS = (
    "before lunch", "at the beach", "by the pool", "in the morning", "with a smile", "over the bridge",
    "on monday", "in the park", "near the bank", "for the boss", "after the game", "every week",
    "very quickly", "from the shop", "with my mum", "by the window", "in the rain", "up the hill",
    "at home", "this evening", "behind the bus", "without a word", "for five minutes", "under the moon",
)  # fmt: skip
_OPENERS = (
    "", "", "", "well", "maybe", "honestly", "by the way", "you know", "oh", "believe me", "perhaps",
    "for example", "of course", "by morning", "now",
)  # fmt: skip
_QUESTIONS = (
    "why did {s} move the {o}", "where is the {o}", "can you bring me the {o}", "what do you think about it",
    "do you remember the summer", "would you mind opening the window", "is it warm outside",
    "how much money do we need", "who was playing the piano", "which way is the museum",
)  # fmt: skip
_STATEMENTS = (
    "please pass me the butter", "the boy was playing with a purple ball", "my mom made pumpkin pie",
    "we will meet by the pool at five", "five fluffy white sheep were moving over the field",
    "bob bought a big map of the moon", "peter piper picked a peck of pickled peppers",
    "the weather was beautiful and warm", "she sells sea shells by the sea shore", "thank you very much",
    "the quick brown fox jumps over the lazy dog", "i will be there in a minute", "we should move forward",
    "put the paper back in the box", "my phone is on the table", "the meeting begins at nine",
    "whatever happens we will find a way", "it was a wonderful moment for everybody",
    "you know what i mean", "please be quiet for a moment", "the museum opens every morning",
)  # fmt: skip


def random_sentence(rng: np.random.Generator) -> str:
    """One English sentence from the grammar, sometimes two joined by a pause."""

    def one() -> str:
        kind = rng.random()
        if kind < 0.2:
            return str(rng.choice(_STATEMENTS))
        if kind < 0.3:
            q = str(rng.choice(_QUESTIONS))
            obj = str(rng.choice(_OBJECTS)).split(" ", 1)[-1]
            return q.format(s=str(rng.choice(_SUBJECTS)), o=obj) + "?"
        words = [str(rng.choice(_OPENERS)), str(rng.choice(_SUBJECTS)), str(rng.choice(_VERBS))]
        words.append(str(rng.choice(_OBJECTS)))
        if rng.random() < 0.6:
            words.append(str(rng.choice(_ADVERBIALS)))
        return " ".join(w for w in words if w)

    def capital(sentence: str) -> str:
        return sentence[0].upper() + sentence[1:] + ("" if sentence.endswith("?") else ".")

    text = capital(one())
    if rng.random() < 0.3:
        text += " " + capital(one())
    return text


# --------------------------------------------------------------------------------------------------
# Voices
@dataclass(frozen=True)
class Voice:
    """One synthetic voice: the engine and its voice name (espeak-ng voices may carry a +variant)."""

    engine: str  # "espeak-ng", "flite" or "festival"
    name: str

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


_ESPEAK_VOICES = ("en-us", "en-us-nyc", "en", "en-029")
_ESPEAK_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
    "klatt3", "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Mario", "Michael", "Mr_serious", "Tweaky",
    "anika", "aunty", "boris", "david", "edward", "ian", "john", "kaukovalta", "max", "norbert", "quincy",
    "rob", "robert", "steph", "travis", "victor", "zac",
)  # fmt: skip
_FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
#: Voices never used for training: lip sync is scored on them.
HELD_OUT_VOICES = ("flite:slt", "flite:rms", "espeak-ng:en-gb-scotland", "espeak-ng:en-gb-scotland+f2")


def available_voices() -> list[Voice]:
    """Every voice the installed engines offer (training and held-out)."""
    voices = []
    if shutil.which("espeak-ng"):
        listed = subprocess.run(
            ["espeak-ng", "--voices=variant"], capture_output=True, text=True, env=no_sound_server_env()
        ).stdout
        variants = {tok[3:] for line in listed.splitlines() for tok in line.split() if tok.startswith("!v/")}
        voices += [Voice("espeak-ng", "en-gb-scotland"), Voice("espeak-ng", "en-gb-scotland+f2")]
        for base in _ESPEAK_VOICES:
            for v in _ESPEAK_VARIANTS:
                if not v:
                    voices.append(Voice("espeak-ng", base))
                elif v in variants:
                    voices.append(Voice("espeak-ng", f"{base}+{v}"))
    if shutil.which("flite"):
        voices += [Voice("flite", v) for v in _FLITE_VOICES if v in flite_voices()]
    if shutil.which("text2wave"):
        voices.append(Voice("festival", "default"))
    return voices


def synthesize(
    voice: Voice, text: str, rng: np.random.Generator, work: Path
) -> tuple[np.ndarray, list[Phone], dict]:
    """(16 kHz audio, timed phones, settings) of `text` spoken by `voice` at a random rate and pitch.

    espeak-ng and flite report their own phone timings (exact labels, `pipelines.tts`); festival's audio is
    forced-aligned with pocketsphinx instead.
    """
    if voice.engine == "espeak-ng":
        rate, pitch = int(rng.integers(120, 230)), int(rng.integers(15, 85))
        audio, phones = espeak_speak(text, voice.name, rate=rate, pitch=pitch)
        return audio, phones, {"rate_wpm": rate, "pitch": pitch, "phones_from": "espeak-ng"}
    if voice.engine == "flite":
        stretch, f0 = float(rng.uniform(0.75, 1.35)), float(rng.uniform(0.8, 1.25))
        mean = 105.0 if voice.name in ("kal", "kal16", "awb", "rms") else 170.0
        audio, phones = flite_speak(text, voice.name, stretch=stretch, f0_mean=mean * f0)
        return audio, phones, {"duration_stretch": stretch, "f0_mean_hz": mean * f0, "phones_from": "flite"}
    if voice.engine == "festival":
        wav_path = work / "tts.wav"
        txt = wav_path.with_suffix(".txt")
        txt.write_text(text)
        proc = subprocess.run(["text2wave", str(txt), "-o", str(wav_path)], capture_output=True, check=False)
        if proc.returncode != 0 or not wav_path.exists():
            raise HeadsplatError(f"{voice.id} failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
        audio = load_audio(wav_path)
        return audio, align_phones(audio, text), {"phones_from": "pocketsphinx"}
    raise HeadsplatError(f"unknown speech engine {voice.engine!r}")


def shift_phones(phones: list[Phone], lead: float, total: float) -> list[Phone]:
    """`phones` moved `lead` seconds later, with silence before them and after them up to `total` seconds."""
    moved = [Phone(p.label, p.start + lead, p.end + lead) for p in phones]
    return merge_silences(pad_silence(moved, 0.0, total))


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Background or distractor noise [n]: white, pink, brown, mains hum or babble-free room tone."""
    kind = rng.integers(0, 4)
    white = rng.standard_normal(n)
    if kind == 0:
        out = white
    elif kind in (1, 2):  # pink (1/f) or brown (1/f^2) by spectral shaping
        spec = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
        out = np.fft.irfft(spec / (f ** (0.5 if kind == 1 else 1.0)), n)
    else:
        t = np.arange(n) / SAMPLE_RATE
        base = rng.choice([50.0, 60.0])
        out = (
            sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6)) + 0.1 * white
        )
    return (out / (np.std(out) + 1e-9)).astype(np.float32)


@dataclass
class CorpusConfig:
    """What the synthetic corpus holds."""

    clips: int = 700
    """Training utterances to make (held-out clips come on top)."""
    held_out_clips: int = 60
    """Utterances by held-out voices, for evaluation only."""
    noise_share: float = 0.06
    """Share of training clips that are non-speech noise or silence, labelled with idle motion."""
    voice_shift_share: float = 0.4
    """Share of training utterances resampled as if a smaller or larger vocal tract spoke them
    (vocal-tract-length perturbation: pitch and formants scale by one factor, durations by its inverse).
    The engines' voices are mostly male; this covers voices none of them has."""
    fps: float = 25.0
    """Motion frame rate."""
    seed: int = 0
    """Random seed for texts, voices, settings and teacher motion."""

    def check(self) -> None:
        """A HeadsplatError naming the first setting no corpus can be built with (NaN included)."""
        if self.clips < 1:
            raise HeadsplatError(f"--clips must be at least 1, got {self.clips}")
        if self.held_out_clips < 0:
            raise HeadsplatError(f"--held-out-clips must be 0 or more, got {self.held_out_clips}")
        if self.clips + self.held_out_clips > MAX_CLIPS:
            raise HeadsplatError(f"at most {MAX_CLIPS} clips in all, got {self.clips + self.held_out_clips}")
        for name in ("noise_share", "voice_shift_share"):
            value = getattr(self, name)
            if not (0 <= value <= 1):
                raise HeadsplatError(f"--{name.replace('_', '-')} must be a share in [0, 1], got {value}")
        if not (self.fps >= MIN_FPS and self.fps <= MAX_FPS):
            raise HeadsplatError(f"--fps must be in [{MIN_FPS:g}, {MAX_FPS:g}], got {self.fps}")
        if self.seed < 0:
            raise HeadsplatError(f"--seed must be 0 or more, got {self.seed}")


@dataclass
class CorpusCommand(CorpusConfig):
    """CorpusConfig plus where `python -m pipelines.synth_corpus` writes; each field is one of its flags."""

    out: str = field(kw_only=True)
    """Output folder (created); gets clips/ and manifest.jsonl."""
    device: str = field(default="cpu", metadata=flag(choices=DEVICES))
    """Accepted for a uniform CLI; corpus building runs on the CPU."""
    progress: bool = field(default=True, metadata=flag(inverse="--quiet", help="No progress bar."))
    """Show a progress bar (off with --quiet)."""

    @property
    def corpus(self) -> CorpusConfig:
        """The corpus settings alone (what corpus.json records)."""
        return CorpusConfig(**{f.name: getattr(self, f.name) for f in fields(CorpusConfig)})


#: Clip names are five digits (00000-99999).
MAX_CLIPS = 100_000
#: Range of the vocal-tract-length perturbation factor (>1: higher pitch and formants, faster).
VOICE_SHIFT = (0.88, 1.25)


def shift_voice(audio: np.ndarray, phones: list[Phone], factor: float) -> tuple[np.ndarray, list[Phone]]:
    """Play `audio` `factor` times faster (frequencies × factor, times ÷ factor) and move its phones to match."""
    if audio.size == 0:
        return audio, list(phones)
    shifted = resample_to(audio, int(round(SAMPLE_RATE * factor)), SAMPLE_RATE)
    scale = audio.size / max(shifted.size, 1)  # the exact time scale of the resampled signal
    end = shifted.size / SAMPLE_RATE
    moved = [Phone(p.label, min(p.start / scale, end), min(p.end / scale, end)) for p in phones]
    # The length rounds: a closing silence takes up the rest.
    return shifted, merge_silences(pad_silence(moved, moved[0].start, end)) if moved else []


def make_clip(
    voice: Voice | None, rng: np.random.Generator, config: CorpusConfig, work: Path, augment: bool = True
) -> tuple:
    """(audio [N], motion, metadata) of one utterance (voice None: a noise/silence clip); `augment` allows
    the voice shift (held-out clips are left as the engine made them)."""
    emotion = str(rng.choice(EMOTIONS)) if rng.random() < 0.4 else "neutral"
    controls = {
        "seed": int(rng.integers(0, 2**31)),
        "emotion": emotion,
        "emotion_strength": float(rng.uniform(0.5, 1.0)) if emotion != "neutral" else 0.0,
        "blink_rate": float(rng.uniform(0.5, 1.6)),
    }
    if voice is None:
        seconds = float(rng.uniform(2.0, 5.0))
        n = int(seconds * SAMPLE_RATE)
        level = 10 ** (rng.uniform(-50, -12) / 20) if rng.random() < 0.8 else 0.0
        audio = _noise(rng, n) * level
        phones, text, settings = [], "", {}
    else:
        text = random_sentence(rng)
        speech, phones, settings = synthesize(voice, text, rng, work)
        if augment and rng.random() < config.voice_shift_share:
            factor = float(rng.uniform(*VOICE_SHIFT))
            speech, phones = shift_voice(speech, phones, factor)
            settings["voice_shift"] = factor
        lead_n, tail_n = (rng.uniform(0.05, 0.7, size=2) * SAMPLE_RATE).astype(int)
        audio = np.concatenate([np.zeros(lead_n), speech, np.zeros(tail_n)])
        phones = shift_phones(phones, lead_n / SAMPLE_RATE, audio.size / SAMPLE_RATE)
        peak = np.abs(audio).max() + 1e-9
        audio = audio / peak * 10 ** (rng.uniform(-20, -1) / 20)  # recording gain varies
        if rng.random() < 0.35:
            snr_db = rng.uniform(12, 40)
            speech_rms = np.sqrt(np.mean(audio[np.abs(audio) > 0.01 * np.abs(audio).max()] ** 2))
            audio = audio + _noise(rng, audio.size) * speech_rms * 10 ** (-snr_db / 20)
            settings["snr_db"] = float(snr_db)
    audio = np.clip(audio, -1, 1).astype(np.float32)
    feats = speech_features(audio, SAMPLE_RATE, config.fps)
    # Phones, not the (noisy) voice-activity measure, say when the teacher's speaker is talking.
    motion = teacher_motion(
        phones, feats.num_frames, config.fps, feats.energy_db, feats.f0_hz,
        activity=None, seed=controls["seed"], emotion=emotion,
        emotion_strength=controls["emotion_strength"], blink_rate=controls["blink_rate"],
    )  # fmt: skip
    meta = {
        "voice": voice.id if voice else "noise",
        "text": text,
        "settings": settings,
        "controls": controls,
        "phones": [[p.label, round(p.start, 3), round(p.end, 3)] for p in phones],
    }
    return audio, motion, meta


def build_corpus(out: Path, config: CorpusConfig, progress: bool = True) -> Path:
    """Write `out`/clips/*.wav + *.npz and `out`/manifest.jsonl; returns the manifest path."""
    from tqdm import tqdm

    config.check()
    voices = available_voices()
    if not voices:
        raise HeadsplatError(
            "no speech synthesiser found: install espeak-ng or flite (apt install espeak-ng flite)"
        )
    held = [v for v in voices if v.id in HELD_OUT_VOICES]
    train = [v for v in voices if v.id not in HELD_OUT_VOICES]
    if not train or not held:
        raise HeadsplatError("need both training and held-out voices; install espeak-ng and flite")
    # flite voices are few but natural-sounding: give them a fixed share rather than 1 in ~250.
    flite_train = [v for v in train if v.engine != "espeak-ng"]
    espeak_train = [v for v in train if v.engine == "espeak-ng"]
    rng = np.random.default_rng(config.seed)
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, Voice | None]] = []
    for _ in range(config.clips):
        if rng.random() < config.noise_share:
            plan.append(("train", None))
        elif flite_train and (not espeak_train or rng.random() < 0.35):
            plan.append(("train", flite_train[rng.integers(len(flite_train))]))
        else:
            plan.append(("train", espeak_train[rng.integers(len(espeak_train))]))
    plan += [("held_out", held[i % len(held)]) for i in range(config.held_out_clips)]
    manifest = out / "manifest.jsonl"
    lines = []
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (split, voice) in enumerate(tqdm(plan, desc="synthesising", disable=not progress)):
            clip_rng = np.random.default_rng([config.seed, i])
            try:
                audio, motion, meta = make_clip(voice, clip_rng, config, Path(tmp), augment=split == "train")
            except HeadsplatError as err:
                failures += 1
                tqdm.write(f"skipped clip {i} ({voice.id if voice else 'noise'}): {err}")
                continue
            name = f"{i:05d}"
            save_wav(audio, clips_dir / f"{name}.wav")
            save_motion(motion, clips_dir / f"{name}.npz")
            lines.append(json.dumps({"id": name, "split": split, "audio": f"clips/{name}.wav",
                                     "motion": f"clips/{name}.npz", **meta}))  # fmt: skip
    if failures > len(plan) // 2:
        raise HeadsplatError(f"{failures} of {len(plan)} clips failed; check the speech engines")
    with atomic_output(manifest) as tmp_manifest:
        tmp_manifest.write_text("\n".join(lines) + "\n")
    (out / "corpus.json").write_text(
        json.dumps({"config": asdict(config), "held_out_voices": HELD_OUT_VOICES})
    )
    return manifest


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m pipelines.synth_corpus`: every flag is a field of CorpusCommand."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.synth_corpus", description=__doc__.split("\n\n")[0]
    )
    add_config_arguments(parser, CorpusCommand, only=("out",))
    add_config_arguments(parser, CorpusCommand, skip=("out",))
    return parser


def main(argv: list[str] | None = None) -> int:
    command = config_from_args(CorpusCommand, build_parser().parse_args(argv))
    return run_cli(lambda: _run(command), interrupted="interrupted; nothing was written")


def check_corpus_folder(out: str | Path) -> Path:
    """`out` if it can hold a corpus: a folder, or a path whose missing folders can be made (as the docs'
    `--out data/corpus` in a fresh checkout), with no file in the way and the first existing one writable."""
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "--out" if existing == out else "the folder of --out"
        raise HeadsplatError(f"{what} {existing} is a file; give a folder (it is created if missing)")
    check_writable_folder(existing if str(existing) else Path("."))
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in CORPUS_ENTRIES)
        if others:
            raise HeadsplatError(
                f"--out {out} holds files that are not a corpus ({', '.join(others[:3])}): give a new or "
                "empty folder, or a corpus folder to rebuild"
            )
    return out


#: What a corpus folder holds; a folder with only these is a corpus that may be rebuilt in place.
CORPUS_ENTRIES = ("clips", "manifest.jsonl", "corpus.json")


def build_corpus_atomically(out: Path, config: CorpusConfig, progress: bool = True) -> Path:
    """`build_corpus` into a hidden staging folder beside `out`, which then replaces `out` whole: an
    interrupted or failed build leaves the folder as it was (no half corpus)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    old = None
    try:
        build_corpus(staging, config, progress)
        if out.exists():
            old = out.parent / f"{staging.name}.old"
            os.replace(out, old)
        os.replace(staging, out)
    finally:
        for leftover in (staging, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)
    return out / "manifest.jsonl"


def _run(command: CorpusCommand) -> int:
    config = command.corpus
    config.check()  # before the folder is made
    out = check_corpus_folder(command.out)
    manifest = build_corpus_atomically(out, config, progress=command.progress)
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Exact phone timings from the speech synthesisers (pipelines.tts) and the synthetic corpus built on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.audio import SAMPLE_RATE, Phone
from models.errors import HeadsplatError
from pipelines.synth_corpus import CorpusConfig, build_corpus, shift_phones
from pipelines.tts import espeak_label, espeak_speak, flite_phones, flite_speak, include_stop_closures

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")


def _energy_db(audio: np.ndarray, start: float, end: float) -> float:
    seg = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
    return 10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-12)


def test_flite_segments_parse_map_and_clip_to_the_audio():
    printed = "pau:0.193 b:0.224 aa:0.435 b:0.486 ax:0.55 dx:0.6 axr:0.7 pau:1.2 \n"
    phones = flite_phones(printed, duration=1.0)
    assert [p.label for p in phones] == ["SIL", "B", "AA", "B", "AH", "D", "ER", "SIL"]
    assert phones[0] == Phone("SIL", 0.0, 0.193) and phones[-1] == Phone("SIL", 0.7, 1.0)
    assert all(a.end == b.start for a, b in zip(phones, phones[1:]))
    # Audio longer than the labels: a closing silence fills the rest.
    assert flite_phones("pau:0.1 m:0.3", duration=0.5)[-1] == Phone("SIL", 0.3, 0.5)
    with pytest.raises(HeadsplatError, match="unknown flite phone"):
        flite_phones("pau:0.1 qq:0.2", 1.0)
    with pytest.raises(HeadsplatError, match="unexpected flite segment"):
        flite_phones("pau:zero", 1.0)


def test_espeak_mnemonics_map_to_arpabet():
    assert espeak_label("b") == "B" and espeak_label("O:") == "AO" and espeak_label("aI@") == "AY"
    assert espeak_label("_:") == "SIL" and espeak_label("t#") == "D" and espeak_label("w#") == "W"
    assert espeak_label(";") == "Y" and espeak_label("O2") == "AO"
    with pytest.raises(HeadsplatError, match="unknown espeak-ng phoneme"):
        espeak_label("Q!")


def test_unvoiced_stop_takes_the_closure_silence_before_its_burst():
    sr = SAMPLE_RATE
    vowel = 0.3 * np.sin(2 * np.pi * 200 * np.arange(int(0.2 * sr)) / sr)
    closure = np.zeros(int(0.06 * sr))
    burst_noise = 0.2 * np.random.default_rng(0).standard_normal(int(0.02 * sr))
    audio = np.concatenate([vowel, closure, burst_noise, vowel]).astype(np.float32)
    # The synthesiser puts the /p/ at its burst (0.26 s); the silent closure 0.20-0.26 s belongs to it.
    phones = [Phone("AE", 0.0, 0.26), Phone("P", 0.26, 0.28), Phone("AH", 0.28, 0.48)]
    fixed = include_stop_closures(audio, phones)
    assert fixed[1].label == "P" and abs(fixed[1].start - 0.20) <= 0.006 and fixed[0].end == fixed[1].start
    assert fixed[2] == phones[2]
    # Bursts between the 5 ms analysis frames are found as well (the frame holding the burst is loud).
    for burst in (0.2613, 0.2626, 0.2638, 0.2649):
        n_closure = int(round((burst - 0.2) * sr))
        shifted = np.concatenate([vowel, np.zeros(n_closure), burst_noise, vowel]).astype(np.float32)
        moved = include_stop_closures(shifted, [Phone("AE", 0.0, burst), Phone("P", burst, burst + 0.02)])
        assert abs(moved[1].start - 0.20) <= 0.006, (burst, moved[1].start)
    # Voiced or non-stop phones keep their times; a /b/ after a pause takes up to 50 ms of it.
    assert include_stop_closures(audio, [phones[0], Phone("N", 0.26, 0.28), phones[2]])[1].start == 0.26
    lead = include_stop_closures(audio, [Phone("SIL", 0.0, 0.3), Phone("B", 0.3, 0.35)])
    assert lead[1].start == pytest.approx(0.25) and lead[0].end == pytest.approx(0.25)


@needs_espeak
def test_espeak_phones_are_exact_and_the_closure_of_p_is_silent():
    audio, phones = espeak_speak("Bob bought a map of the moon.", "en-us", rate=160, pitch=50)
    assert audio.dtype == np.float32 and audio.size > SAMPLE_RATE
    labels = [p.label for p in phones]
    assert labels[0] == "SIL" and labels[-1] == "SIL"
    assert all(a.end == pytest.approx(b.start) for a, b in zip(phones, phones[1:]))
    assert phones[-1].end == pytest.approx(audio.size / SAMPLE_RATE, abs=1e-3)
    assert labels.count("M") == 2 and "P" in labels and labels.count("B") >= 2
    # The /p/ of "map": its first 20 ms is the closure, far quieter than the vowel before it.
    i = labels.index("P")
    vowel, stop = phones[i - 1], phones[i]
    assert vowel.label == "AE"
    assert _energy_db(audio, stop.start, stop.start + 0.02) < _energy_db(audio, vowel.start, vowel.end) - 20
    with pytest.raises(HeadsplatError, match="no voice"):
        espeak_speak("hello", "xx-not-a-voice")


@needs_flite
def test_flite_phones_cover_the_audio():
    audio, phones = flite_speak("Please pass me the butter.", "slt", stretch=1.2)
    labels = [p.label for p in phones]
    assert labels[0] == "SIL" and labels[-1] == "SIL" and {"P", "M", "B"} <= set(labels)
    assert phones[-1].end == pytest.approx(audio.size / SAMPLE_RATE, abs=1e-3)
    assert all(p.end > p.start for p in phones)
    with pytest.raises(HeadsplatError, match="no voice 'no-such-voice'"):
        flite_speak("hello", "no-such-voice")


def test_shift_phones_pads_with_silence():
    phones = [Phone("SIL", 0.0, 0.1), Phone("M", 0.1, 0.2), Phone("AA", 0.2, 0.4)]
    shifted = shift_phones(phones, 0.5, 1.2)
    assert shifted == [
        Phone("SIL", 0.0, 0.6),
        Phone("M", 0.6, 0.7),
        Phone("AA", 0.7, 0.9),
        Phone("SIL", 0.9, 1.2),
    ]


@needs_espeak
@needs_flite
def test_tiny_corpus_has_exact_phones_for_every_speech_clip(tmp_path):
    manifest = build_corpus(
        tmp_path, CorpusConfig(clips=6, held_out_clips=2, noise_share=0.2, seed=3), progress=False
    )
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(entries) == 8 and sum(e["split"] == "held_out" for e in entries) == 2
    for e in entries:
        assert (tmp_path / e["audio"]).exists() and (tmp_path / e["motion"]).exists()
        if e["voice"] == "noise":
            assert e["phones"] == []
            continue
        assert e["settings"]["phones_from"] in ("espeak-ng", "flite")
        starts = [p[1] for p in e["phones"]]
        assert starts == sorted(starts) and e["phones"][0][0] == "SIL" and len(e["phones"]) > 5


def test_voice_shift_scales_pitch_and_phone_times_together():
    from pipelines.synth_corpus import shift_voice

    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    phones = [Phone("SIL", 0.0, 0.4), Phone("AA", 0.4, 1.0)]
    shifted, moved = shift_voice(tone, phones, 1.25)
    assert shifted.size == pytest.approx(SAMPLE_RATE / 1.25, abs=2)
    spectrum = np.abs(np.fft.rfft(shifted))
    assert np.fft.rfftfreq(shifted.size, 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(250, abs=2)
    assert moved[0] == Phone("SIL", 0.0, pytest.approx(0.32, abs=1e-3))
    assert moved[-1].end == pytest.approx(shifted.size / SAMPLE_RATE)
    assert all(a.end == b.start for a, b in zip(moved, moved[1:]))
    empty, same = shift_voice(np.zeros(0, np.float32), phones, 1.1)
    assert empty.size == 0 and same == phones


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")
def test_flite_phones_of_several_sentences_share_one_timeline():
    """flite's -t speaks the text as one utterance; reading it from a file would restart the clock per sentence."""
    audio, phones = flite_speak("Bob bought a map. The moon is bright. We sat by the pool.", "slt")
    starts = [p.start for p in phones]
    assert starts == sorted(starts)
    assert phones[-1].end >= 0.9 * audio.size / 16000
    assert sum(p.label == "B" for p in phones) == 5  # Bob (2), bought, bright, by: no sentence lost


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_espeak_library_leaves_no_sound_server_files(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    code = "from pipelines.tts import espeak_speak; espeak_speak('hello', 'en-us')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert list(tmp_path.iterdir()) == []

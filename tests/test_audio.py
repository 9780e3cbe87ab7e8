"""Audio loading, speech features, voice activity and pocketsphinx phones."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from models.audio import (
    FeatureConfig,
    FeatureStream,
    align_phones,
    is_silent,
    recognize_phones,
    speech_features,
)
from models.errors import HeadsplatError
from pipelines.audio_io import ffmpeg_exe, load_audio, save_wav

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def _tone(seconds: float = 1.0, sr: int = 16000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, str]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    path = tmp_path_factory.mktemp("speech") / "bob.wav"
    text = "Bob bought a map of the moon"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
    return load_audio(path), text


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3", ".m4a", ".mp4"])
def test_loader_reads_formats_as_mono_16k(tmp_path, suffix):
    stereo_44k = tmp_path / "src.wav"
    import soundfile

    t = np.arange(44100) / 44100
    soundfile.write(
        stereo_44k, np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1) * 0.4, 44100
    )
    out = tmp_path / f"clip{suffix}"
    cmd = [ffmpeg_exe(), "-v", "error", "-y"]
    if suffix == ".mp4":  # a video with an audio track: the loader must take the audio
        cmd += ["-f", "lavfi", "-i", "color=c=black:s=64x64:d=1"]
    cmd += ["-i", str(stereo_44k)]
    if suffix == ".mp4":
        cmd += ["-shortest", "-c:v", "mpeg4"]
    subprocess.run([*cmd, str(out)], check=True)
    audio = load_audio(out)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(audio.size / 16000 - 1.0) < 0.08  # codecs pad a few ms
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 440) < 5
    # Stereo is mixed down, not summed: a 0.4-amplitude sine (RMS 0.28) stays below the sum's 0.57
    # (libsndfile formats are averaged; ffmpeg's downmix keeps the power of the centre, RMS 0.4).
    assert 0.24 < np.sqrt(np.mean(audio[2000:14000] ** 2)) < 0.42


def test_loader_errors_are_clear(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(HeadsplatError, match="empty"):
        load_audio(empty)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"this is not audio at all" * 20)
    with pytest.raises(HeadsplatError, match="cannot read audio"):
        load_audio(corrupt)
    with pytest.raises(HeadsplatError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    long_wav = tmp_path / "long.wav"
    save_wav(np.zeros(16000 * 3, np.float32), long_wav)
    with pytest.raises(HeadsplatError, match="limit"):
        load_audio(long_wav, max_seconds=2.0)
    video = tmp_path / "silent_video.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64:d=1", "-c:v", "mpeg4",
                    str(video)], check=True)  # fmt: skip
    with pytest.raises(HeadsplatError, match="no audio track"):
        load_audio(video)


def test_silence_loads_and_is_recognised_as_silent(tmp_path):
    path = tmp_path / "silence.wav"
    save_wav(np.zeros(16000, np.float32), path)
    audio = load_audio(path)
    assert is_silent(audio)
    assert not is_silent(_tone())


def test_features_align_with_motion_frames():
    audio = _tone(2.0)
    feats = speech_features(audio, 16000, fps=25)
    assert feats.values.shape == (50, FeatureConfig().dim)
    assert np.all(np.isfinite(feats.values))
    # 30 fps gives 60 frames for the same two seconds; resampled input gives the same frame count.
    assert speech_features(audio, 16000, fps=30).num_frames == 60
    import librosa

    at_44k = librosa.resample(audio, orig_sr=16000, target_sr=44100)
    assert speech_features(at_44k, 44100, fps=25).num_frames == 50
    # A 220 Hz tone is voiced with pitch near 220 Hz.
    assert np.median(feats.f0_hz[5:-5]) == pytest.approx(220, rel=0.05)


def test_features_do_not_depend_on_gain():
    audio = _tone(1.5)
    loud, quiet = speech_features(audio), speech_features(audio * 0.05)
    np.testing.assert_allclose(loud.values, quiet.values, atol=0.05)


def test_voice_activity_rejects_noise_and_accepts_speech(speech):
    audio, _ = speech
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    assert speech_features(noise).activity.mean() < 0.15
    assert speech_features(audio).activity.max() > 0.9


def test_feature_stream_matches_offline_features(speech):
    audio, _ = speech
    offline = speech_features(audio, level_db=-20.0)
    stream = FeatureStream(25.0, level_db=-20.0)
    parts = [stream.push(audio[i : i + 3000]) for i in range(0, audio.size, 3000)] + [stream.finish()]
    streamed = np.concatenate(parts)
    assert streamed.shape == offline.values.shape
    # Away from the last frames (where offline saw the end of the clip later), they agree closely.
    np.testing.assert_allclose(streamed[:-3], offline.values[:-3], atol=0.02)


def test_forced_alignment_finds_the_words_phones(speech):
    audio, text = speech
    phones = align_phones(audio, text)
    labels = [p.label for p in phones if p.label != "SIL"]
    assert labels[:3] == ["B", "AA", "B"]
    assert labels.count("M") == 2  # "map", "moon"
    assert all(b.start >= a.start for a, b in zip(phones, phones[1:]))
    assert phones[-1].end <= audio.size / 16000 + 0.02
    with pytest.raises(HeadsplatError, match="not in the pronunciation dictionary"):
        align_phones(audio, "Bob bought a zzxqvk")


def test_phone_recognition_without_transcript(speech):
    audio, _ = speech
    phones = recognize_phones(audio)
    labels = {p.label for p in phones}
    assert len(phones) >= 8
    assert labels & {"M", "B", "P"}  # the bilabials are audible
    assert labels & {"AA", "AO", "AH", "UW"}


def test_a_failed_phone_pass_falls_back_loudly(speech, monkeypatch):
    import pocketsphinx

    class FailingPhonePass(pocketsphinx.Decoder):
        def set_alignment(self, *args, **kwargs):
            raise RuntimeError("Alignment failed in frame 3")

    monkeypatch.setattr(pocketsphinx, "Decoder", FailingPhonePass)
    audio, text = speech
    with pytest.warns(UserWarning, match="phone-level alignment failed"):
        phones = align_phones(audio, text)
    labels = [p.label for p in phones if p.label != "SIL"]
    assert labels[:3] == ["B", "AA", "B"]  # still the words' phones, spread over their spans

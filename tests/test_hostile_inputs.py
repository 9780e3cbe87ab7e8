"""Hostile and broken inputs: no file disclosure, no false success, no crash, nothing overwritten.

One test per defect found by trying the tools as a hostile but fair user would; each fails on the code
before the fix. benchmarks/hostile_inputs.py runs the wider table of inputs across every CLI.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from models.errors import HeadsplatError
from pipelines import talk, track
from pipelines.audio_io import load_audio, save_wav
from pipelines.cli import EXIT_TERMINATED, check_output, run_cli
from pipelines.image_io import load_image
from pipelines.motion_io import load_motion, save_motion
from pipelines.talk import DEFAULT_PORTRAIT, speak
from pipelines.video_io import VideoWriter

ESPEAK = shutil.which("espeak-ng")
FLITE = shutil.which("flite")
ROOT = Path(__file__).resolve().parents[1]


def _seconds(path: Path) -> float:
    with wave.open(str(path)) as fh:
        return fh.getnframes() / fh.getframerate()


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ------------------------------------------------------------------------------------------------
# 1. Text is spoken literally, never parsed as the synthesiser's options
@pytest.mark.skipif(ESPEAK is None and FLITE is None, reason="needs espeak-ng or flite")
@pytest.mark.parametrize("text", ["-f/etc/hostname", "--help", "-5 degrees outside", "-w /tmp/x.wav hi"])
def test_text_starting_with_a_dash_is_spoken_as_written(tmp_path, text):
    wav = speak(text, tmp_path / "speech.wav")
    literal = tmp_path / "literal.txt"
    literal.write_text(text)
    reference = tmp_path / "reference.wav"
    if ESPEAK:  # the same engine and voice, reading the literal text from a file
        cmd = ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(reference), "-f", str(literal)]
    else:
        cmd = ["flite", "-voice", "slt", "-f", str(literal), "-o", str(reference)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert abs(_seconds(wav) - _seconds(reference)) < 0.05
    assert _seconds(wav) > 0.5  # "--help" and "-f..." made speech, not a usage text or a file's contents


@pytest.mark.skipif(FLITE is None, reason="needs flite")
def test_flite_speaks_dash_text_literally():
    from pipelines.tts import flite_speak

    _, phones = flite_speak("-f/etc/hostname", "slt")
    spoken = [p.label for p in phones if p.label != "SIL"]
    assert spoken[:2] == ["EH", "F"]  # "eff" (the letter f), not the words of the hostname file


def test_text_limits_are_one_clear_error(tmp_path):
    for text in ("   ", "a" * (talk.MAX_TEXT_CHARS + 1), "hello\0world"):
        with pytest.raises(HeadsplatError):
            speak(text, tmp_path / "speech.wav")


# ------------------------------------------------------------------------------------------------
# 2. Any encoder failure fails the run and leaves no file
def _frames(n=3, size=(48, 64)):
    return [np.full((*size, 3), (40 * i) % 256, np.uint8) for i in range(n)]


def test_encoder_failure_at_the_end_raises_and_leaves_nothing(tmp_path, monkeypatch):
    # ffmpeg that reads every frame, then fails as it does on a full disk (exit 1, "No space left").
    failing = [
        "sh",
        "-c",
        "cat >/dev/null; echo 'Error writing trailer: No space left on device' >&2; exit 1",
    ]
    monkeypatch.setattr(VideoWriter, "_command", lambda self, w, h: failing)
    out = tmp_path / "v.mp4"
    with pytest.raises(HeadsplatError, match="no space left"), VideoWriter(out, 25) as writer:
        for frame in _frames():
            writer.write(frame)
    assert _leftovers(tmp_path, set()) == []


def test_encoder_that_dies_early_is_an_error_not_a_broken_pipe(tmp_path, monkeypatch):
    monkeypatch.setattr(
        VideoWriter, "_command", lambda self, w, h: ["sh", "-c", "echo 'bad codec' >&2; exit 3"]
    )
    out = tmp_path / "v.mp4"
    with pytest.raises(HeadsplatError, match="bad codec"), VideoWriter(out, 25) as writer:
        for _ in range(200):  # enough to fill the pipe once the encoder has gone
            writer.write(np.zeros((256, 256, 3), np.uint8))
    assert _leftovers(tmp_path, set()) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_a_really_full_disk_fails_the_video_and_leaves_nothing(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        rng = np.random.default_rng(0)
        with pytest.raises(HeadsplatError, match="no space left"), VideoWriter(disk / "v.mp4", 25) as writer:
            for _ in range(60):  # noise compresses badly: far more than 64 KiB of H.264
                writer.write(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------------------------------------
# 4-5. Outputs never overwrite inputs; unwritable outputs fail before any work
def test_output_that_is_an_input_is_refused(tmp_path):
    source = tmp_path / "v.mp4"
    source.write_bytes(b"precious")
    link = tmp_path / "link.mp4"
    link.symlink_to(source)
    for out in (source, link, tmp_path / "." / "v.mp4"):
        with pytest.raises(HeadsplatError, match="also an input"):
            check_output(out, [str(source)])
    assert source.read_bytes() == b"precious"


def test_talk_refuses_to_overwrite_its_audio_and_exits_2(tmp_path, capsys):
    audio = tmp_path / "v.mp4"
    with VideoWriter(audio, 25, audio=None) as writer:
        for frame in _frames():
            writer.write(frame)
    before = audio.read_bytes()
    code = talk.main(["--audio", str(audio), "-o", str(audio), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "also an input" in err[0]
    assert audio.read_bytes() == before


def test_track_refuses_to_overwrite_its_video_with_the_overlay(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    with VideoWriter(video, 25) as writer:
        for frame in _frames():
            writer.write(frame)
    before = video.read_bytes()
    code = track.main([str(video), "--overlay", str(video), "--quiet"])
    assert code == 2 and "also an input" in capsys.readouterr().err
    assert video.read_bytes() == before


@pytest.mark.parametrize("where", ["directory", "proc", "missing-folder"])
def test_unwritable_talk_output_fails_before_any_work(tmp_path, capsys, monkeypatch, where):
    out = {
        "directory": tmp_path,
        "proc": Path("/proc/headsplat-test.mp4"),
        "missing-folder": tmp_path / "nope" / "x.mp4",
    }[where]
    monkeypatch.setattr(talk, "prepare_avatar", lambda *a, **k: pytest.fail("work started"))
    if where == "directory":
        out = tmp_path / "folder.mp4"
        out.mkdir()
    code = talk.main(["-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err


def test_late_os_errors_are_one_line_exit_2(capsys):
    def body():
        raise PermissionError(13, "Permission denied", "/somewhere/out.mp4")

    assert run_cli(body) == 2
    assert capsys.readouterr().err.strip() == "error: Permission denied: /somewhere/out.mp4"


# ------------------------------------------------------------------------------------------------
# 6. NaN/inf samples at any sample rate are a clear error (checked before resampling)
@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_nan_samples_in_a_wav_of_any_rate_are_a_clear_error(tmp_path, rate):
    samples = np.zeros((rate, 2), np.float32)
    samples[100, 1] = np.inf
    samples[200, 0] = np.nan
    soundfile.write(tmp_path / "bad.wav", samples, rate, subtype="FLOAT")
    with pytest.raises(HeadsplatError, match="NaN or infinite"):
        load_audio(tmp_path / "bad.wav")


def test_long_audio_is_read_in_blocks_and_resampled_like_before(tmp_path, monkeypatch):
    import librosa

    import pipelines.audio_io as audio_io

    monkeypatch.setattr(audio_io, "_BLOCK_FRAMES", 4096)  # many blocks, with a short one at the end
    rng = np.random.default_rng(1)
    stereo = (0.2 * rng.standard_normal((44100 * 2 + 777, 2))).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", stereo, 44100, subtype="FLOAT")
    blocks = load_audio(tmp_path / "a.wav")
    whole = librosa.resample(stereo.mean(axis=1), orig_sr=44100, target_sr=16000)
    assert blocks.shape == whole.shape
    assert np.abs(blocks - np.clip(whole, -1, 1)).max() < 1e-3


# ------------------------------------------------------------------------------------------------
# 8. SIGTERM unwinds like Ctrl-C: no partial output, exit 143
def test_sigterm_during_a_video_leaves_nothing_and_exits_143(tmp_path, capsys):
    out = tmp_path / "v.mp4"

    def body():
        with VideoWriter(out, 25) as writer:
            for i, frame in enumerate(_frames(50)):
                writer.write(frame)
                if i == 10:
                    os.kill(os.getpid(), signal.SIGTERM)

    assert run_cli(body, interrupted="interrupted; nothing was written") == EXIT_TERMINATED
    assert "interrupted" in capsys.readouterr().err
    assert _leftovers(tmp_path, set()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


@pytest.mark.slow
def test_sigterm_to_a_running_talk_leaves_no_partial_files(tmp_path):
    env = {**os.environ, "HEADSPLAT_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.talk", "-o", str(out / "t.mp4"), "--size", "128", "--quiet"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob(".t.*.mp4")):
        time.sleep(0.02)  # until the encoder's hidden temporary output exists: frames are being written
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == EXIT_TERMINATED, err
    assert list(out.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("headsplat-")]


# ------------------------------------------------------------------------------------------------
# 9. Very large photos are downscaled as they are decoded
def test_large_photo_is_downscaled_on_decode(tmp_path):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8))
    big.save(tmp_path / "big.jpg", quality=70)
    big.save(tmp_path / "big.png")
    for name in ("big.jpg", "big.png"):
        photo = load_image(tmp_path / name, max_side=1000)
        assert photo.shape == (750, 1000, 3)
    assert load_image(DEFAULT_PORTRAIT, max_side=4000).shape == np.asarray(Image.open(DEFAULT_PORTRAIT)).shape


def test_talk_output_size_is_capped_by_max_side(tmp_path, capsys):
    code = talk.main(["--max-side", "100", "-o", str(tmp_path / "x.mp4"), "--quiet"])
    assert code == 2 and "--max-side" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# 10. Motion files with absurd frame rates
@pytest.mark.parametrize("fps", [1e-9, 0.5, 5000.0, 1e9])
def test_motion_file_with_absurd_fps_is_refused(tmp_path, fps):
    from models.latent import Motion

    motion = Motion.neutral(10, 25.0)
    path = save_motion(motion, tmp_path / "m.npz")
    arrays = dict(np.load(path))
    arrays["fps"] = np.asarray(fps)
    np.savez(path, **arrays)
    with pytest.raises(HeadsplatError, match="fps"):
        load_motion(path)


def test_saved_motion_and_wav_have_ordinary_permissions(tmp_path):
    from models.latent import Motion

    umask = os.umask(0o022)
    try:
        paths = [
            save_motion(Motion.neutral(3, 25.0), tmp_path / "m.json"),
            save_wav(np.zeros(1600), tmp_path / "a.wav"),
        ]
    finally:
        os.umask(umask)
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o644


def test_avatar_files_get_ordinary_permissions(tmp_path):
    """safetensors' save_file swaps in a private (0600) file; atomic_output sets the mode after writing."""
    from pipelines.files import atomic_output

    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "a.safetensors") as tmp:
            tmp.unlink()
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    finally:
        os.umask(umask)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644


def test_warnings_in_a_command_are_one_line_each(capsys):
    import warnings

    def body():
        warnings.warn("the phone pass failed", stacklevel=1)

    assert run_cli(body) == 0
    assert capsys.readouterr().err == "warning: the phone pass failed\n"


@pytest.mark.skipif(ESPEAK is None and FLITE is None, reason="needs espeak-ng or flite")
def test_speaking_text_writes_nothing_outside_its_work_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(home))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    speak("hello there", work / "speech.wav")
    assert list(home.rglob("*")) == []  # no sound-server runtime files


def test_explicit_empty_or_undecodable_text_is_refused(tmp_path, capsys):
    for text in ("", "caf\udce9"):
        code = talk.main(["--text", text, "-o", str(tmp_path / "x.mp4"), "--quiet"])
        assert code == 2 and capsys.readouterr().err.startswith("error:")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(ESPEAK is None and FLITE is None, reason="needs espeak-ng or flite")
def test_text_with_words_outside_the_dictionary_still_talks(tmp_path):
    from pipelines.drivers import GeneratorConfig, speech_motion

    text = "-f/etc/hostname zqxwv"
    samples = load_audio(speak(text, tmp_path / "speech.wav"))
    with pytest.warns(UserWarning, match="recognised from the speech"):
        motion = speech_motion(samples, GeneratorConfig(steps=0, text=text), transcript=text)
    assert motion.num_frames == pytest.approx(samples.size / 16000 * 25, abs=1)


def test_a_bad_save_motion_suffix_fails_before_the_video(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(talk, "prepare_avatar", lambda *a, **k: pytest.fail("work started"))
    code = talk.main(["-o", str(tmp_path / "x.mp4"), "--save-motion", str(tmp_path / "m.txt"), "--quiet"])
    assert code == 2 and "--save-motion" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_an_avatar_on_a_full_disk_is_one_clear_error(tmp_path):
    from pipelines.avatar_io import save_avatar

    class Big:  # an avatar-like object with 1 MB of state
        def state(self):
            import torch

            return {"x": torch.zeros(256, 1024)}, {"kind": "test"}

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        with pytest.raises(HeadsplatError, match="no space left"):
            save_avatar(Big(), disk / "avatar.safetensors")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_an_interrupted_avatar3d_leaves_none_of_its_files(tmp_path, monkeypatch, capsys):
    from pipelines import avatar3d

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(avatar3d, "render_rgb", interrupt)  # during the turntable, after the .ply/.splat
    args = [
        "-o",
        str(tmp_path),
        "--num-gaussians",
        "5000",
        "--size",
        "64",
        "--turntable-seconds",
        "1",
        "--quiet",
    ]
    threads = torch.get_num_threads()
    try:
        assert avatar3d.main(args) == 130
    finally:
        torch.set_num_threads(threads)
    assert "nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(ESPEAK is None or FLITE is None, reason="needs espeak-ng and flite")
def test_an_interrupted_corpus_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    from pipelines import synth_corpus
    from pipelines.synth_corpus import CorpusConfig, build_corpus_atomically

    config = CorpusConfig(clips=2, held_out_clips=1, noise_share=0.0, voice_shift_share=0.0)
    out = tmp_path / "corpus"
    build_corpus_atomically(out, config, progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert (out / "manifest.jsonl").exists() and len(before) == 9  # clips/, 3 wav + 3 npz, 2 json files

    made = synth_corpus.make_clip

    def interrupt_second(voice, rng, *args, **kwargs):
        if interrupt_second.calls == 1:
            raise KeyboardInterrupt
        interrupt_second.calls += 1
        return made(voice, rng, *args, **kwargs)

    interrupt_second.calls = 0
    monkeypatch.setattr(synth_corpus, "make_clip", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        build_corpus_atomically(out, CorpusConfig(clips=3, held_out_clips=1, seed=5), progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no staging folder left


def test_a_corpus_is_not_built_over_other_files(tmp_path, capsys):
    from pipelines.synth_corpus import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path), "--clips", "1", "--held-out-clips", "1", "--quiet"]) == 2
    assert "not a corpus" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_file_named_like_an_ffmpeg_protocol_is_read_as_a_file(tmp_path, monkeypatch):
    from pipelines.audio_io import _read_ffmpeg

    secret = tmp_path / "secret.wav"
    save_wav(np.full(1600, 0.5, np.float32), secret)
    decoy = tmp_path / f"concat:{secret.name}"  # as a protocol, ffmpeg would read secret.wav through it
    decoy.write_bytes(b"not audio")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HeadsplatError, match="cannot read audio"):
        _read_ffmpeg(Path(decoy.name), 16000, 60.0)


def test_an_unwritable_avatar_cache_warns_and_talk_goes_on(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would go")
    cfg = talk.TalkConfig(cache_dir=str(blocker), size=64)
    with pytest.warns(UserWarning, match="avatar cache was not written"):
        photo, avatar = talk.prepare_avatar(cfg)
    assert photo.ndim == 3 and avatar.camera.width == 64


def test_an_interrupt_wrapped_by_native_code_is_still_an_interrupt(capsys):
    from pipelines.cli import Terminated

    def body():  # what numba's dispatcher raises when SIGTERM's handler fires inside it
        try:
            raise Terminated()
        except Terminated as err:
            raise SystemError(
                "CPUDispatcher(<function _bin>) returned a result with an exception set"
            ) from err

    assert run_cli(body, interrupted="interrupted; nothing was written") == EXIT_TERMINATED
    assert capsys.readouterr().err == "interrupted; nothing was written\n"

    def unrelated():
        raise SystemError("a real bug")

    with pytest.raises(SystemError):
        run_cli(unrelated)

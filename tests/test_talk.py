"""Talk end to end: a playable mp4 with audio, lips that follow the driver, clear errors on bad input."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import HeadsplatError
from models.latent import EXPRESSION_INDEX, Motion
from models.motion_diffusion import MAX_STEPS
from pipelines import talk
from pipelines.audio_io import load_audio, save_wav
from pipelines.config_cli import config_from_args
from pipelines.drivers import DEFAULT_AUDIO, MAX_TEXT_CHARS, check_drivers
from pipelines.motion_io import save_motion
from pipelines.portrait import DEFAULT_PORTRAIT
from pipelines.talk import TalkConfig, build_parser, main

FFPROBE = shutil.which("ffprobe")


def _probe(path: Path) -> dict:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("avatar-cache")


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory):
    """The first 2.3 s of the shipped speech sample."""
    samples = load_audio(DEFAULT_AUDIO)[: int(2.3 * 16000)]
    return save_wav(samples, tmp_path_factory.mktemp("audio") / "short.wav")


def _run(args, capsys):
    code = main([*args, "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.skipif(FFPROBE is None, reason="needs ffprobe (Debian package ffmpeg)")
def test_shipped_portrait_and_speech_make_a_playable_mp4_with_audio(tmp_path, short_speech, cache, capsys):
    out = tmp_path / "talk.mp4"
    code, err = _run(
        ["--audio", str(short_speech), "-o", str(out), "--size", "256", "--cache-dir", str(cache)], capsys
    )
    assert code == 0, err
    info = _probe(out)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert video["codec_name"] == "h264" and video["r_frame_rate"] == "25/1"
    photo = Image.open(DEFAULT_PORTRAIT)
    assert (int(video["width"]), int(video["height"])) == photo.size
    assert audio and audio[0]["codec_name"] == "aac"
    frames = int(video["nb_frames"])
    assert abs(frames / 25.0 - 2.3) <= 1 / 25.0 + 1e-6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def _lip_motion(frames=60, fps=25.0):
    """Mouth opens and closes twice, head still; eyes open."""
    motion = Motion.neutral(frames, fps)
    t = np.arange(frames) / fps
    motion.expression[:, EXPRESSION_INDEX["jawOpen"]] = 0.55 * np.clip(np.sin(2 * np.pi * 0.8 * t), 0, 1)
    return motion


def test_lips_in_the_video_follow_the_driving_motion_and_a_still_head_does_not_jitter(
    tmp_path, cache, capsys
):
    from pipelines.track import landmark_jitter, lip_gap_and_anchors

    motion = _lip_motion()
    save_motion(motion, tmp_path / "lips.npz")
    out = tmp_path / "lips.mp4"
    code, err = _run(
        ["--motion", str(tmp_path / "lips.npz"), "-o", str(out), "--size", "384", "--cache-dir", str(cache)],
        capsys,
    )
    assert code == 0, err
    # One fixed crop for every frame: the measured jitter is then the video's, not the tracker's own.
    opening, anchors = lip_gap_and_anchors(out)
    driven = motion["jawOpen"][: len(opening)]
    assert np.corrcoef(opening, driven)[0, 1] >= 0.7
    # Lips close where the driver closes them: the opening at jaw-closed frames is near the smallest seen.
    closed = driven < 0.02
    assert opening[closed].mean() < opening.min() + 0.3 * np.ptp(opening)
    # The head does not move in this motion: eye corners, nose tip and bridge do not jitter. Jitter is
    # what is left after a 5-frame moving average (slow, smooth drift is not jitter).
    assert landmark_jitter(anchors) < 0.5


def test_a_driving_video_reenacts_the_portrait(tmp_path, cache, capsys):
    from pipelines.video_io import VideoWriter

    # The driver: the shipped portrait itself, rolled a little over one second (a rigid nod).
    photo = np.asarray(Image.open(DEFAULT_PORTRAIT).convert("RGB"))
    import cv2

    driving = tmp_path / "driving.mp4"
    with VideoWriter(driving, 25.0) as writer:
        for k in range(25):
            m = cv2.getRotationMatrix2D((256.0, 260.0), 6.0 * np.sin(2 * np.pi * k / 25), 1.0)
            writer.write(
                cv2.warpAffine(photo, m, (photo.shape[1], photo.shape[0]), borderMode=cv2.BORDER_REPLICATE)
            )
    out = tmp_path / "reenacted.mp4"
    code, err = _run(
        [
            "--driving",
            str(driving),
            "-o",
            str(out),
            "--size",
            "256",
            "--save-motion",
            str(tmp_path / "m.npz"),
            "--cache-dir",
            str(cache),
        ],
        capsys,
    )
    assert code == 0, err
    from pipelines.motion_io import load_motion

    motion = load_motion(tmp_path / "m.npz")
    assert motion.num_frames == 25
    roll = np.degrees(motion.rotation[:, 2])
    # The roll of the driver comes through (sign aside: image rotation vs head roll conventions).
    assert np.ptp(roll) > 6.0
    assert abs(np.corrcoef(roll, np.sin(2 * np.pi * np.arange(25) / 25))[0, 1]) > 0.9


def test_no_face_gives_one_clear_error_and_no_output(tmp_path, short_speech, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(blank)
    out = tmp_path / "x.mp4"
    code, err = _run(
        ["-s", str(blank), "--audio", str(short_speech), "-o", str(out), "--cache-dir", ""], capsys
    )
    assert code == 2 and "no face" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".x*"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: ["--audio", str(d / "missing.wav")], "not found"),
        (lambda d: ["--audio", str(_write(d / "bad.wav", b"RIFF0000WAVEjunk"))], "bad.wav"),
        (
            lambda d: [
                "--motion",
                str(
                    _write(
                        d / "m.json",
                        b'{"format": "headsplat.motion", "fps": 25, "expression": [[0.1]], "rotation": [[0,0,0]], "translation": [[0,0,0]]}',
                    )
                ),
            ],
            "shape",
        ),
        (lambda d: ["-o", str(d / "nowhere" / "out.mp4")], "output folder does not exist"),
        (lambda d: ["-o", str(d / "out.avi")], ".mp4"),
        (lambda d: ["-s", str(_write(d / "trunc.jpg", DEFAULT_PORTRAIT.read_bytes()[:3000]))], "trunc.jpg"),
    ],
)
def test_bad_input_fails_with_one_line_and_leaves_nothing(tmp_path, make, message, capsys):
    args = make(tmp_path)
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.mp4")]
    code, err = _run([*args, "--cache-dir", ""], capsys)
    assert code == 2, err
    assert message in err and err.strip().count("\n") == 0, err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*mp4"))


def test_motion_that_does_not_match_the_audio_is_refused(tmp_path, short_speech, capsys):
    save_motion(Motion.neutral(250, 25.0), tmp_path / "long.npz")  # 10 s of motion for 2.3 s of audio
    code, err = _run(
        [
            "--motion",
            str(tmp_path / "long.npz"),
            "--audio",
            str(short_speech),
            "-o",
            str(tmp_path / "o.mp4"),
            "--cache-dir",
            "",
        ],
        capsys,
    )
    assert code == 2 and "do not belong together" in err


def test_flags_parse_to_the_config_defaults_and_back():
    assert config_from_args(TalkConfig, build_parser().parse_args([])) == TalkConfig()
    args = "-s me.jpg --text hi --pose-scale 0.5 --emotion happy --size 256 --quiet".split()
    cfg = config_from_args(TalkConfig, build_parser().parse_args(args))
    expected = TalkConfig(
        image="me.jpg", text="hi", pose_scale=0.5, emotion="happy", size=256, progress=False
    )
    assert cfg == expected


def test_one_driver_only_but_a_motion_may_bring_its_audio():
    check_drivers("a.wav", None, "m.npz", None)
    for drivers, named in [(("a.wav", "hi", None, None), "both audio and text"),
                           ((None, "hi", None, "v.mp4"), "both text and driving"),
                           (("a.wav", None, "m.npz", "v.mp4"), "audio, motion and driving")]:  # fmt: skip
        with pytest.raises(HeadsplatError, match=named):
            check_drivers(*drivers)


def test_text_limits_are_the_callers_the_default_being_the_command_lines():
    check_drivers(None, "a" * MAX_TEXT_CHARS, None, None)
    with pytest.raises(HeadsplatError, match="characters"):
        check_drivers(None, "a" * (MAX_TEXT_CHARS + 1), None, None)
    with pytest.raises(HeadsplatError, match="the most is 1,000"):
        check_drivers(None, "a" * 1001, None, None, max_text_chars=1000)
    for bad in ("   ", "nul\0here"):
        with pytest.raises(HeadsplatError):
            check_drivers(None, bad, None, None)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", str(MAX_STEPS + 1)], f"steps must be 0-{MAX_STEPS}"),
        (["--audio", "a.wav", "--text", "hi"], "one driver"),
        (["--pose-scale", "11"], "pose_scale"),
        (["--fps", "0"], "fps"),
    ],
)
def test_bad_controls_and_drivers_are_refused_before_any_work(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setattr(talk, "prepare_avatar", lambda *a, **k: pytest.fail("work started"))
    code, err = _run([*flags, "-o", str(tmp_path / "x.mp4")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

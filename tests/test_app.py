"""The Gradio app driven end to end through gradio_client: Talk streams and finishes, Guide and the head
search run on tiny-sd3, mistakes get plain messages, two users at once both finish, no server file leaks."""

import json
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import app_server  # noqa: E402
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app  # noqa: E402
from models.latent import EXPRESSION_INDEX, Motion  # noqa: E402
from pipelines.audio_io import load_audio, save_wav  # noqa: E402
from pipelines.motion_io import load_motion, save_motion  # noqa: E402

FFPROBE = shutil.which("ffprobe")
PORTRAIT = app.DEFAULTS / "portrait.jpg"
FPS = 10  # small clips render fast on 2 cores


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 1 s speech clip, a matching 1 s motion (jaw opening), and a few bad files."""
    folder = tmp_path_factory.mktemp("media")
    save_wav(load_audio(app.DEFAULTS / "speech.wav")[:16000], folder / "speech.wav")
    motion = Motion.neutral(25, 25.0)
    motion.expression[:, EXPRESSION_INDEX["jawOpen"]] = np.linspace(0.0, 0.6, 25)
    save_motion(motion, folder / "jaw.npz")
    (folder / "notes.txt").write_text("not a picture")
    (folder / "fake.png").write_text("not a picture either")
    rng = np.random.default_rng(0)
    save_wav(0.1 * rng.standard_normal(16000 * 80).astype(np.float32), folder / "big.wav")  # ~2.6 MB
    return folder


@pytest.fixture(scope="module")
def server():
    """The app on 127.0.0.1 with a 2 MB upload limit and a 5 s speech limit; closed afterwards."""
    with app_server(max_file_size="2mb", max_seconds="5") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def _submit_talk(client, portrait, audio=None, text="", motion=None, seed=0, size=128):
    """Talk with steps 0, neutral emotion, unit scales, moving head, full frame."""
    portrait, audio, motion = (handle_file(str(p)) if p else None for p in (portrait, audio, motion))
    args = [portrait, audio, text, motion, seed, 0, "neutral", 1.0, 1.0, 1.0, False, False, size, FPS]
    return client.submit(*args, api_name="/talk")


def _probe(path) -> dict:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def _check_talk_video(path, seconds):
    info = _probe(path)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert video["codec_name"] == "h264"
    assert (int(video["width"]), int(video["height"])) == Image.open(PORTRAIT).size
    assert int(video["nb_read_frames"]) == round(seconds * FPS)
    assert any(s["codec_type"] == "audio" for s in info["streams"]), "the speech is muxed in"


@pytest.mark.skipif(FFPROBE is None, reason="needs ffprobe (Debian package ffmpeg)")
def test_talk_streams_chunks_then_gives_the_full_mp4_and_the_motion(client, media):
    job = _submit_talk(client, PORTRAIT, media / "speech.wav", motion=media / "jaw.npz")
    live, video, motion_csv = job.result(timeout=240)
    _check_talk_video(video, 1.0)
    # The stream: a playlist that grows by one segment per chunk (0.5 s first, then 1 s pieces).
    streamed = [out[0] for out in job.outputs() if isinstance(out[0], str)]
    assert len(streamed) == 2, streamed
    playlist = Path(streamed[-1]).read_text()
    durations = [float(d) for d in re.findall(r"#EXTINF:([0-9.]+)", playlist)]
    assert len(durations) == 2 and abs(sum(durations) - 1.0) < 0.05, playlist
    # The motion download is the motion that drove the video: the jaw opens as the input did.
    played = load_motion(motion_csv)
    assert played.num_frames == FPS
    jaw = played.expression[:, EXPRESSION_INDEX["jawOpen"]]
    expected = load_motion(media / "jaw.npz").resample(FPS).expression[:, EXPRESSION_INDEX["jawOpen"]]
    np.testing.assert_allclose(jaw, expected, atol=1e-3)


@pytest.mark.skipif(FFPROBE is None, reason="needs ffprobe (Debian package ffmpeg)")
def test_talk_from_speech_alone_makes_a_video_with_audio(client, media):
    _, video, motion_csv = _submit_talk(client, PORTRAIT, media / "speech.wav").result(timeout=240)
    _check_talk_video(video, 1.0)
    assert load_motion(motion_csv).num_frames == FPS


@pytest.mark.skipif(FFPROBE is None, reason="needs ffprobe (Debian package ffmpeg)")
def test_two_users_at_once_both_finish(client, media):
    jobs = [
        _submit_talk(client, PORTRAIT, media / "speech.wav", motion=media / "jaw.npz", seed=seed)
        for seed in (1, 2)
    ]
    videos = [job.result(timeout=240)[1] for job in jobs]
    for video in videos:
        _check_talk_video(video, 1.0)


def _error_of(job) -> str:
    with pytest.raises(AppError) as caught:
        job.result(timeout=120)
    return str(caught.value)


def test_wrong_file_types_get_plain_messages_without_server_paths(client, media):
    message = _error_of(_submit_talk(client, media / "fake.png", media / "speech.wav"))
    assert "not an image" in message
    message = _error_of(_submit_talk(client, PORTRAIT, media / "notes.txt"))
    assert "audio must be one of" in message and ".txt" in message
    for text in (message,):
        assert "/tmp" not in text and tempfile.gettempdir() not in text


def test_missing_or_doubled_drivers_and_overlong_speech_are_refused(client, media):
    assert "speech" in _error_of(_submit_talk(client, PORTRAIT))
    assert "not both" in _error_of(_submit_talk(client, PORTRAIT, media / "speech.wav", text="hello"))
    long = save_wav(np.zeros(16000 * 7, np.float32), media / "seven.wav")  # limit is 5 s on this server
    message = _error_of(_submit_talk(client, PORTRAIT, long))
    assert "longer than 5 s" in message and "/" not in message


def test_an_upload_over_the_size_limit_is_refused_with_the_limit_named(server, client, media):
    # gradio_client checks the limit the server announces before it uploads ...
    with pytest.raises(ValueError, match="exceeds the maximum file size of 2097152 bytes"):
        _submit_talk(client, PORTRAIT, media / "big.wav").result(timeout=120)
    # ... and the server itself refuses a browser's (or anyone's) oversized upload.
    import httpx

    with open(media / "big.wav", "rb") as fh:
        response = httpx.post(f"{server.rstrip('/')}/gradio_api/upload", files={"files": fh}, timeout=30)
    assert response.status_code == 413
    assert "maximum allowed size of 2097152 bytes" in response.text


def test_guide_on_tiny_sd3_head_guidance_changes_the_image_and_w0_does_not(client):
    common = dict(model="tiny-sd3", heads_file=None, soft=1.0, cfg=4.0, steps=2, seed=3, compare=True)
    guided, baseline, caption = client.predict(
        prompt="a red fox", heads="1:*", scale=3.0, **common, api_name="/guide"
    )
    assert "not an image model" in caption
    guided, baseline = np.asarray(Image.open(guided)), np.asarray(Image.open(baseline))
    assert guided.shape == baseline.shape == (256, 256, 3)  # the tiny model's 16 px, shown 16x (nearest)
    assert (guided[::16, ::16] == guided[15::16, 15::16]).all()
    assert np.abs(guided.astype(int) - baseline.astype(int)).max() > 0, "head guidance changed nothing"
    off, baseline_again, _ = client.predict(
        prompt="a red fox", heads="1:*", scale=0.0, **common, api_name="/guide"
    )
    np.testing.assert_array_equal(np.asarray(Image.open(off)), baseline)
    np.testing.assert_array_equal(np.asarray(Image.open(baseline_again)), baseline)


def test_guide_refuses_folder_paths_as_models_and_files_as_head_specs(client):
    args = dict(prompt="x", heads_file=None, scale=3.0, soft=1.0, cfg=4.0, steps=2, seed=0, compare=False)
    with pytest.raises(AppError, match="Hugging Face id"):
        client.predict(model="/etc", heads="", **args, api_name="/guide")
    with pytest.raises(AppError, match="layer:head"):
        client.predict(model="tiny-sd3", heads="/etc/passwd", **args, api_name="/guide")


def test_head_search_writes_a_heads_json_that_guide_accepts(client):
    heads_json, summary = client.predict(
        prompts="a portrait\na tree",
        seeds="0",
        k=1,
        rounds=1,
        objective="sharpness",
        pool="0:*",
        model="tiny-sd3",
        steps=1,
        api_name="/search",
    )
    state = json.loads(Path(heads_json).read_text())
    assert state["complete"] and len(state["heads"]) == 1 and state["heads"][0][0] == 0
    scores = state["rounds"][0]["scores"]
    assert len(scores) == 4, "every head of the pool layer was scored"
    assert summary["heads"] == state["heads"]
    guided, _, _ = client.predict(
        prompt="a portrait", model="tiny-sd3", heads="", heads_file=handle_file(heads_json), scale=3.0,
        soft=1.0, cfg=4.0, steps=2, seed=0, compare=False, api_name="/guide",
    )  # fmt: skip
    assert np.asarray(Image.open(guided)).shape == (256, 256, 3)


@pytest.mark.parametrize("target", ["/etc/passwd", "README.md", "app.py", str(app.DEFAULTS / "speech.wav")])
def test_server_files_are_not_reachable_by_path(server, target):
    for prefix in ("gradio_api/file=", "file="):
        url = f"{server.rstrip('/')}/{prefix}{target}"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=10)
        assert caught.value.code in (403, 404), url


@pytest.mark.skipif(FFPROBE is None, reason="needs ffprobe (Debian package ffmpeg)")
def test_avatar3d_builds_a_ply_a_turntable_and_a_talking_head(client, media):
    short = Motion.neutral(10, 25.0)  # 0.4 s, silent: Talk's tests cover the audio track
    short.expression[:, EXPRESSION_INDEX["jawOpen"]] = np.linspace(0.0, 0.6, 10)
    view, turntable, talking, downloads = client.predict(
        portrait=handle_file(str(PORTRAIT)), num_gaussians=10_000, size=128, turntable_seconds=1, audio=None,
        text="", motion_file=handle_file(str(save_motion(short, media / "short.npz"))), camera="front",
        emotion="neutral", seed=0, still=False, api_name="/avatar3d",
    )  # fmt: skip
    with open(view, "rb") as fh:
        header = fh.read(2000).split(b"end_header")[0].decode()
    assert header.startswith("ply") and "property float opacity" in header
    assert int(re.search(r"element vertex (\d+)", header).group(1)) >= 10_000
    assert sorted(Path(p).suffix for p in downloads) == [".ply", ".safetensors", ".splat"]
    spin = next(s for s in _probe(turntable)["streams"] if s["codec_type"] == "video")
    assert (int(spin["width"]), int(spin["height"])) == (128, 128) and int(spin["nb_read_frames"]) == 25
    talk = next(s for s in _probe(talking)["streams"] if s["codec_type"] == "video")
    assert int(talk["nb_read_frames"]) == 10

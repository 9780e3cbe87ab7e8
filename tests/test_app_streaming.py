"""pipelines.streaming: chunks cover the video exactly once with their own slice of the audio, and the full
mp4 written alongside holds the same frames."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from models.errors import HeadsplatError
from models.latent import EXPRESSION_INDEX, Motion
from pipelines.audio_io import load_audio, save_wav
from pipelines.drivers import DEFAULT_AUDIO
from pipelines.motion_io import load_motion, save_motion
from pipelines.streaming import StreamConfig, audio_slice, chunk_bounds, stream_talk
from pipelines.talk import TalkConfig
from pipelines.video_io import read_video

FFPROBE = shutil.which("ffprobe")


@pytest.mark.parametrize(("frames", "fps"), [(1, 25.0), (12, 25.0), (13, 25.0), (100, 25.0), (31, 10.0)])
def test_chunks_cover_every_frame_once_with_a_short_first_one(frames, fps):
    config = StreamConfig(chunk_seconds=1.0, first_chunk_seconds=0.5)
    bounds = chunk_bounds(frames, fps, config)
    assert bounds[0][0] == 0 and bounds[-1][1] == frames
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])), "no gap, no overlap"
    assert bounds[0][1] <= max(1, round(0.5 * fps))
    assert all(stop - start <= round(fps) for start, stop in bounds)


def test_chunk_lengths_must_be_positive():
    with pytest.raises(HeadsplatError, match="positive"):
        chunk_bounds(10, 25.0, StreamConfig(chunk_seconds=0.0))


def test_audio_slices_join_back_into_the_audio_and_pad_past_its_end():
    samples = np.random.default_rng(0).standard_normal(16000).astype(np.float32)  # 1.0 s
    bounds = chunk_bounds(30, 25.0, StreamConfig())  # 1.2 s of video: 0.2 s past the audio
    pieces = [audio_slice(samples, a, b, 25.0) for a, b in bounds]
    joined = np.concatenate(pieces)
    assert len(joined) == round(30 / 25.0 * 16000)
    np.testing.assert_array_equal(joined[:16000], samples)
    assert not joined[16000:].any(), "silence after the audio ends"


def _duration(path: Path, stream: str) -> float:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", stream, "-show_entries", "stream=duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(out.stdout)["streams"][0]["duration"])


@pytest.mark.skipif(FFPROBE is None, reason="needs ffprobe (Debian package ffmpeg)")
def test_stream_talk_yields_playable_chunks_and_the_same_frames_in_the_full_mp4(tmp_path):
    fps = 10.0
    save_wav(load_audio(DEFAULT_AUDIO)[: int(1.2 * 16000)], tmp_path / "speech.wav")
    motion = Motion.neutral(12, fps)
    motion.expression[:, EXPRESSION_INDEX["jawOpen"]] = np.linspace(0.0, 0.6, 12)
    save_motion(motion, tmp_path / "jaw.npz")
    cfg = TalkConfig(
        audio=str(tmp_path / "speech.wav"),
        motion=str(tmp_path / "jaw.npz"),
        output=str(tmp_path / "full.mp4"),
        fps=fps,
        size=128,
        crop=True,
        cache_dir=str(Path(tempfile.gettempdir()) / "headsplat-app-tests"),
        progress=False,
    )
    config = StreamConfig(motion_file=str(tmp_path / "motion.csv"))
    events = list(stream_talk(cfg, tmp_path, config))
    assert [e.stage for e in events] == ["avatar", "motion", "chunk", "chunk", "done"]
    chunks = [e.chunk for e in events if e.stage == "chunk"]
    assert [e.frames_done for e in events if e.stage == "chunk"] == [5, 12]
    for chunk, seconds in zip(chunks, (0.5, 0.7)):
        assert abs(_duration(chunk, "v:0") - seconds) < 0.02
        assert abs(_duration(chunk, "a:0") - seconds) < 0.05, "each chunk carries its own audio slice"
    streamed = np.concatenate([np.stack(list(read_video(c))) for c in chunks]).astype(np.float32)
    full = np.stack(list(read_video(events[-1].video))).astype(np.float32)
    assert full.shape == streamed.shape == (12, 128, 128, 3)
    assert np.abs(full - streamed).mean() < 2.0, "the stream shows the frames of the full video"
    assert abs(_duration(events[-1].video, "a:0") - 1.2) < 0.05
    np.testing.assert_allclose(
        load_motion(tmp_path / "motion.csv").expression[:, EXPRESSION_INDEX["jawOpen"]],
        motion.expression[:, EXPRESSION_INDEX["jawOpen"]],
        atol=1e-3,
    )
    assert not [p for p in tmp_path.glob("chunk-*.wav")], "audio slices are removed once muxed"


def test_stream_talk_refuses_audio_over_the_limit_before_fitting(tmp_path):
    save_wav(np.zeros(16000 * 3, np.float32), tmp_path / "three.wav")
    cfg = TalkConfig(image=str(tmp_path / "no-such.jpg"), audio=str(tmp_path / "three.wav"))
    with pytest.raises(HeadsplatError, match="longer than 2 s"):
        next(stream_talk(cfg, tmp_path, StreamConfig(max_seconds=2.0)))

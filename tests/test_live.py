"""Live sessions: audio pushed in blocks of any size and rate comes out as timed frames; silence keeps the
head alive; late frames are dropped, not queued; bad input is refused."""

import json

import numpy as np
import pytest

from models.errors import HeadsplatError
from pipelines.audio_io import load_audio
from pipelines.live import LiveConfig, LiveSession, main
from pipelines.talk import DEFAULT_AUDIO

SMALL = dict(size=96, max_side=320, cache_dir="")


@pytest.fixture(scope="module")
def speech():
    return load_audio(DEFAULT_AUDIO)[: 16_000 * 3]  # 3 s


@pytest.fixture(scope="module")
def built():
    """One avatar and model for the module's sessions (a session takes them ready-made)."""
    session = LiveSession(LiveConfig(**SMALL, idle_after=0.0))
    session.close()
    return session.avatar, session.photo, session.model


def session_of(built, **changes):
    avatar, photo, model = built
    return LiveSession(LiveConfig(**SMALL, **changes), avatar=avatar, photo=photo, model=model)


def test_pushed_audio_comes_out_as_one_frame_per_40_ms_in_order(built, speech):
    session = session_of(built, max_latency=0.0, idle_after=0.0, queue_seconds=60.0)
    frames = []
    for i in range(0, speech.size, 333):  # odd block sizes
        session.push(speech[i : i + 333])
        frames += session.frames()
    frames += session.close()
    assert [f.index for f in frames] == list(range(len(frames)))
    assert abs(len(frames) - 75) <= 2  # 3 s at 25 fps
    assert all(f.image.dtype == np.uint8 and f.image.shape == frames[0].image.shape for f in frames)
    assert frames[0].image.shape[:2] == built[1].shape[:2]  # pasted into the (downscaled) photo
    assert all(f.latency >= 0 for f in frames) and session.stats.dropped_late == 0
    # The mouth moves with the speech: the frames differ most around the mouth while talking.
    stack = np.stack([f.image.astype(np.float32) for f in frames])
    assert stack.std(axis=0).max() > 20


def test_other_sample_rates_and_int16_blocks_are_taken(built, speech):
    from models.audio import resample_to

    at_48k = (resample_to(speech[:16_000], 16_000, 48_000) * 32767).astype(np.int16)
    stereo = np.stack([at_48k, at_48k], axis=1)  # int16 [N, 2], as a browser's microphone may send
    session = session_of(built, max_latency=0.0, idle_after=0.0, keep_motion=True)
    for i in range(0, at_48k.size, 960):
        session.push(stereo[i : i + 960], sample_rate=48_000)
    frames = session.close()
    assert abs(len(frames) - 25) <= 2
    # The same speech pushed as float mono at 16 kHz moves the mouth the same way: nothing was garbled.
    reference = session_of(built, max_latency=0.0, idle_after=0.0, keep_motion=True)
    reference.push(speech[:16_000])
    reference.close()
    from models.visemes import mouth_opening

    a, b = (mouth_opening(s.motion().expression) for s in (session, reference))
    n = min(a.size, b.size)
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.9
    with pytest.raises(HeadsplatError, match="closed"):
        session.push(at_48k[:10], sample_rate=48_000)


def test_silence_is_fed_in_step_with_the_clock_and_the_head_keeps_moving(built):
    now = [0.0]
    avatar, photo, model = built
    session = LiveSession(
        LiveConfig(**SMALL, idle_after=0.05, crop=True),
        avatar=avatar,
        photo=photo,
        model=model,
        clock=lambda: now[0],
    )
    now[0] = 4.0  # four seconds pass and nobody speaks
    frames = []
    for _ in range(400):
        frames += session.frames()
        if len(frames) >= 80:
            break
        import time

        time.sleep(0.02)
    session.close()
    assert session.stats.idle_seconds >= 3.9
    assert len(frames) >= 80
    stack = np.stack([f.image.astype(np.float32) for f in frames])
    assert np.abs(np.diff(stack, axis=0)).mean() > 0.05  # breathing, blinking, glancing: not a still


def test_late_frames_are_dropped_and_far_behind_whole_chunks_but_never_four_in_a_row(built, speech):
    ticks = [0.0]

    def slow_clock():  # every look at the clock is a second later: rendering is always behind
        ticks[0] += 1.0
        return ticks[0]

    avatar, photo, model = built
    session = LiveSession(
        LiveConfig(**SMALL, chunk=4, idle_after=0.0),
        avatar=avatar,
        photo=photo,
        model=model,
        clock=slow_clock,
    )
    session.push(speech[:16_000])
    frames = session.close()
    assert session.stats.dropped_late > 0
    drawn = [f.index for f in frames]
    assert drawn and all(i % 4 == 3 or i == drawn[-1] for i in drawn)  # a chunk's newest frame, if any
    assert max(b - a for a, b in zip([-1, *drawn], drawn)) <= 16  # at most three chunks skipped in a row


def test_an_unread_queue_keeps_only_the_newest_frames(built, speech):
    session = session_of(built, max_latency=0.0, idle_after=0.0, queue_seconds=0.2)
    session.push(speech[: 16_000 * 2])
    frames = session.close()
    assert len(frames) == 5 and session.stats.dropped_unread >= 40
    assert session.latest() is None


def test_bad_configs_and_blocks_are_refused(built):
    for bad in (
        dict(size=10),
        dict(chunk=0),
        dict(max_latency=-1.0),
        dict(steps=0),
        dict(idle_after=float("nan")),
    ):
        with pytest.raises(HeadsplatError):
            LiveConfig(**bad).check()
    session = session_of(built, idle_after=0.0)
    with pytest.raises(HeadsplatError, match="shape"):
        session.push(np.zeros((2, 2, 2), np.float32))
    session.push(np.zeros(160, np.float32), sample_rate=16_000)
    with pytest.raises(HeadsplatError, match="one sample rate"):
        session.push(np.zeros(160, np.float32), sample_rate=48_000)
    session.close()


def test_the_command_replays_a_file_and_reports_latency(tmp_path, capsys, speech):
    from pipelines.audio_io import save_wav

    wav = save_wav(speech[:16_000], tmp_path / "one_second.wav")
    log, video, saved = tmp_path / "latency.jsonl", tmp_path / "live.mp4", tmp_path / "motion.npz"
    argv = [
        "--audio",
        str(wav),
        "--size",
        "96",
        "--max-side",
        "320",
        "--cache-dir",
        "",
        "--latency-log",
        str(log),
    ]
    code = main([*argv, "-o", str(video), "--save-motion", str(saved)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    assert summary["frames"] == len(out) - 1 == len(log.read_text().splitlines())
    from pipelines.motion_io import load_motion
    from pipelines.video_io import read_video

    assert len(list(read_video(video))) == summary["frames"] == load_motion(saved).num_frames
    assert summary["latency_ms"]["p50"] > 0 and summary["sustained_fps"] > 0
    assert out[0].startswith("frame     0")


def test_the_command_refuses_bad_flags_with_exit_2(tmp_path, capsys):
    assert main(["--audio", str(tmp_path / "missing.wav")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--audio", "x.wav", "--size", "ten"])
    assert stop.value.code == 2


def test_a_producer_faster_than_real_time_is_held_back(built, speech):
    # A TTS pushing 3 s of audio at once may run ahead by max_pending seconds, no more: push() waits.
    session = session_of(built, max_latency=0.0, idle_after=0.0, max_pending=0.5, queue_seconds=60.0)
    most = 0
    for i in range(0, speech.size, 1600):
        session.push(speech[i : i + 1600])
        most = max(most, session._pending)
    frames = session.close()
    assert most <= 0.5 * 16_000 and abs(len(frames) - 75) <= 2


def test_closing_without_flush_stops_at_once(built, speech):
    session = session_of(built, max_latency=0.0, idle_after=0.0, queue_seconds=60.0)
    session.push(speech)  # 3 s queued
    frames = session.close(flush=False)
    assert len(frames) < 75 and not session._thread.is_alive()
    with pytest.raises(HeadsplatError, match="closed"):
        session.push(speech[:100])

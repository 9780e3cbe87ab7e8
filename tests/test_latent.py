"""Identity and Motion: operations, formats (npz, JSON, Live Link Face CSV) and validation."""

import numpy as np
import pytest

from models.errors import HeadsplatError
from models.latent import (
    ARKIT_NAMES,
    EXPRESSION_INDEX,
    EXPRESSION_NAMES,
    Identity,
    Motion,
    format_timecode,
    parse_timecode,
)
from pipelines.motion_io import load_identity, load_motion, save_identity, save_motion


def _random_motion(frames=60, fps=25.0, seed=0, symmetric_pairs=True):
    rng = np.random.default_rng(seed)
    expression = rng.uniform(0, 1, (frames, 53)).astype(np.float32)
    if symmetric_pairs:
        for left, right in (("browInnerUp_L", "browInnerUp_R"), ("cheekPuff_L", "cheekPuff_R")):
            expression[:, EXPRESSION_INDEX[right]] = expression[:, EXPRESSION_INDEX[left]]
    rotation = rng.normal(0, 0.2, (frames, 3)).astype(np.float32)
    translation = rng.normal(0, 1.0, (frames, 3)).astype(np.float32)
    return Motion(expression, rotation, translation, fps)


def _assert_same(a: Motion, b: Motion, atol=1e-6):
    assert a.num_frames == b.num_frames and abs(a.fps - b.fps) < 1e-9
    np.testing.assert_allclose(a.expression, b.expression, atol=atol)
    np.testing.assert_allclose(a.rotation, b.rotation, atol=atol)
    np.testing.assert_allclose(a.translation, b.translation, atol=atol)


def test_round_trip_npz_json_csv_is_exact_within_1e6(tmp_path):
    motion = _random_motion(frames=80)
    save_motion(motion, tmp_path / "m.npz")
    from_npz = load_motion(tmp_path / "m.npz")
    save_motion(from_npz, tmp_path / "m.json")
    from_json = load_motion(tmp_path / "m.json")
    save_motion(from_json, tmp_path / "m.csv", csv_translation=True)
    from_csv = load_motion(tmp_path / "m.csv", csv_fps=60)
    _assert_same(motion, from_csv)
    # Without a stated rate the rows' spacing tells 25 fps.
    _assert_same(motion, load_motion(tmp_path / "m.csv"))


@pytest.mark.parametrize(("frames", "fps"), [(10, 25.0), (25, 25.0), (7, 30.0), (300, 24.0)])
def test_short_and_long_csv_clips_come_back_at_their_own_frame_rate(tmp_path, frames, fps):
    motion = _random_motion(frames=frames, fps=fps)
    save_motion(motion, tmp_path / "m.csv", csv_translation=True)
    _assert_same(motion, load_motion(tmp_path / "m.csv"))


def test_csv_merges_split_pairs_as_the_documented_lossy_step(tmp_path):
    motion = _random_motion(symmetric_pairs=False)
    save_motion(motion, tmp_path / "m.csv")
    back = load_motion(tmp_path / "m.csv")
    for left, right in (("browInnerUp_L", "browInnerUp_R"), ("cheekPuff_L", "cheekPuff_R")):
        mean = 0.5 * (motion[left] + motion[right])
        np.testing.assert_allclose(back[left], mean, atol=1e-6)
        np.testing.assert_allclose(back[right], mean, atol=1e-6)
    others = [i for i, n in enumerate(EXPRESSION_NAMES) if not n.startswith(("browInnerUp", "cheekPuff"))]
    np.testing.assert_allclose(back.expression[:, others], motion.expression[:, others], atol=1e-6)


LIVE_LINK_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    "EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    "EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,"
    "MouthRight,MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,"
    "MouthDimpleRight,MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,"
    "MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,"
    "CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,"
    "LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
)


def _live_link_row(timecode, jaw_open, blink_left, head_yaw):
    values = [0.0] * 61
    values[ARKIT_NAMES.index("JawOpen")] = jaw_open
    values[ARKIT_NAMES.index("EyeBlinkLeft")] = blink_left
    values[ARKIT_NAMES.index("BrowInnerUp")] = 0.25
    values[52] = head_yaw
    return ",".join([timecode, "61", *(f"{v:.6f}" for v in values)])


def test_hand_written_live_link_face_csv_imports(tmp_path):
    # Live Link Face records at 60 fps with a sub-frame fraction; this take starts mid-second.
    lines = [LIVE_LINK_HEADER]
    for i in range(130):
        second, frame = divmod(58 + i, 60)
        lines.append(
            _live_link_row(f"14:03:{52 + second:02d}:{frame:02d}.207", i / 129, 1.0 if i == 5 else 0, 0.1)
        )
    path = tmp_path / "take.csv"
    path.write_text("\n".join(lines) + "\n")
    motion = load_motion(path)
    assert motion.fps == 60.0 and motion.num_frames == 130
    np.testing.assert_allclose(motion["jawOpen"], np.arange(130) / 129, atol=1e-6)
    assert motion["eyeBlink_L"][5] == 1.0 and motion["eyeBlink_R"].max() == 0.0
    np.testing.assert_allclose(motion["browInnerUp_L"], 0.25)
    np.testing.assert_allclose(motion["browInnerUp_R"], 0.25)
    np.testing.assert_allclose(motion.rotation[:, 1], 0.1, atol=1e-6)


def test_csv_with_a_dropped_frame_is_resampled_onto_a_regular_grid(tmp_path):
    lines = [LIVE_LINK_HEADER]
    for i in [0, 1, 2, 4, 5]:  # frame 3 missing
        lines.append(_live_link_row(f"00:00:00:{i:02d}.000", i / 10, 0, 0))
    lines.append(_live_link_row("00:00:01:00.000", 0.0, 0, 0))
    path = tmp_path / "gap.csv"
    path.write_text("\n".join(lines))
    motion = load_motion(path, csv_fps=30)
    assert motion.num_frames == 31
    assert motion["jawOpen"][3] == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Timecode,BlendShapeCount,JawOpen\n", "no frames"),
        ("Time,JawOpen\n00:00:00:00.000,0.1\n", "first column must be 'Timecode'"),
        (
            "Timecode,BlendShapeCount,JawOpen,Banana\n00:00:00:00.000,61,0.1,0.2\n",
            "unknown ARKit CSV column 'Banana'",
        ),
        (
            "Timecode,BlendShapeCount,JawOpen\n00:00:00:01.000,61,0.1\n00:00:00:00.000,61,0.1\n",
            "not increasing",
        ),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:00.000,61,nan\n", "NaN"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:00.000,61,abc\n", "not a number"),
        ("Timecode,BlendShapeCount,JawOpen\nyesterday,61,0.1\n", "bad Live Link Face timecode"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:00.000,61\n", "fields, the header has"),
        ("Timecode,BlendShapeCount,JawOpen,jawopen\n00:00:00:00.000,61,0,0\n", "repeats column"),
    ],
)
def test_malformed_csv_fails_with_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(HeadsplatError) as err:
        load_motion(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_malformed_npz_and_json_fail_clearly(tmp_path):
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    np.savez(tmp_path / "shape.npz", expression=np.zeros((5, 52)), rotation=np.zeros((5, 3)),
             translation=np.zeros((5, 3)), fps=25.0)  # fmt: skip
    np.savez(tmp_path / "nan.npz", expression=np.full((5, 53), np.nan), rotation=np.zeros((5, 3)),
             translation=np.zeros((5, 3)), fps=25.0)  # fmt: skip
    cases = {
        "corrupt.npz": "not a valid .npz",
        "broken.json": "invalid JSON",
        "other.json": "not a headsplat motion",
        "shape.npz": "must be [T, 53]",
        "nan.npz": "NaN",
        "missing.npz": "not found",
    }
    for name, message in cases.items():
        with pytest.raises(HeadsplatError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_motion(tmp_path / name)
    with pytest.raises(HeadsplatError, match="motion files end in"):
        save_motion(_random_motion(), tmp_path / "m.txt")


def test_motion_validation_rejects_wrong_shapes_nan_and_out_of_range_weights():
    ok = _random_motion(frames=4)
    with pytest.raises(HeadsplatError, match="rotation must be"):
        Motion(ok.expression, ok.rotation[:3], ok.translation)
    with pytest.raises(HeadsplatError, match="infinite"):
        Motion(ok.expression, ok.rotation + np.inf, ok.translation)
    with pytest.raises(HeadsplatError, match=r"in \[0, 1\]"):
        Motion(ok.expression * 3, ok.rotation, ok.translation)
    with pytest.raises(HeadsplatError, match="fps"):
        Motion(ok.expression, ok.rotation, ok.translation, fps=0)


def test_slice_concatenate_resample_blend_and_scale():
    motion = _random_motion(frames=50, fps=25)
    parts = [motion.slice(0, 20), motion.slice(20)]
    _assert_same(Motion.concatenate(parts), motion)
    assert motion.slice_seconds(0.4, 1.2).num_frames == 20
    # Resampling to 50 fps and back keeps the original frames.
    up = motion.resample(50)
    assert up.num_frames == 100 and up.fps == 50
    np.testing.assert_allclose(up.expression[::2], motion.expression, atol=1e-6)
    _assert_same(up.resample(25), motion, atol=1e-5)
    other = Motion.neutral(50, 25)
    half = motion.blend(other, 0.5)
    np.testing.assert_allclose(half.expression, motion.expression * 0.5, atol=1e-6)
    ramp = motion.blend(other, np.linspace(0, 1, 50))
    np.testing.assert_allclose(ramp.rotation[0], motion.rotation[0])
    np.testing.assert_allclose(ramp.rotation[-1], 0, atol=1e-7)
    with pytest.raises(HeadsplatError, match="cannot blend"):
        motion.blend(Motion.neutral(10), 0.5)
    with pytest.raises(HeadsplatError, match="different fps"):
        Motion.concatenate([motion, motion.resample(30)])
    loud = motion.scaled(expression_scale=2.0, pose_scale=0.0)
    assert loud.expression.max() <= 1.0 and np.all(loud.rotation == 0)


def test_idle_motion_blinks_breathes_and_keeps_the_mouth_closed():
    idle = Motion.idle(25 * 20, fps=25, seed=3)
    blink = idle["eyeBlink_L"]
    closures = np.sum((blink[1:] > 0.9) & (blink[:-1] <= 0.9))
    assert 3 <= closures <= 10  # one blink every 2-6 s over 20 s
    assert idle["jawOpen"].max() == 0.0
    assert np.ptp(idle.rotation[:, 0]) > 0.005
    other = Motion.idle(25 * 20, fps=25, seed=4)
    assert not np.allclose(other["eyeBlink_L"], blink)


def test_timecodes_parse_and_format():
    assert parse_timecode("14:03:52:28.207") == (14 * 3600 + 3 * 60 + 52, pytest.approx(28.207))
    assert format_timecode(61.5, 30) == "00:01:01:15.000"


def test_identity_round_trips_and_validates(tmp_path):
    identity = Identity(np.linspace(-1, 1, 50), [0.1, 0.2, 0.3], [1, 2, 3], 800.0, (512, 512))
    save_identity(identity, tmp_path / "id.json")
    back = load_identity(tmp_path / "id.json")
    np.testing.assert_allclose(back.coefficients, identity.coefficients)
    assert back.focal_px == 800.0 and back.image_size == (512, 512)
    with pytest.raises(HeadsplatError, match="100"):
        Identity(np.zeros(101))
    with pytest.raises(HeadsplatError, match="NaN"):
        Identity(np.array([np.nan]))


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        save_motion(_random_motion(frames=3), tmp_path / "m.npz")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o644


def test_csv_has_live_link_faces_exact_columns_unless_translation_is_asked_for(tmp_path):
    motion = _random_motion(frames=5)
    save_motion(motion, tmp_path / "plain.csv")
    header = (tmp_path / "plain.csv").read_text().splitlines()[0].split(",")
    # Timecode, BlendShapeCount and the 61 values BlendShapeCount declares: 52 shapes, 9 head and eye angles.
    assert len(header) == 2 + 61 and not any(c.startswith("HeadTranslation") for c in header)
    assert all(row.split(",")[1] == "61" for row in (tmp_path / "plain.csv").read_text().splitlines()[1:])
    assert np.all(load_motion(tmp_path / "plain.csv").translation == 0)
    save_motion(motion, tmp_path / "moved.csv", csv_translation=True)
    header = (tmp_path / "moved.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["HeadTranslationX", "HeadTranslationY", "HeadTranslationZ"]
    np.testing.assert_allclose(load_motion(tmp_path / "moved.csv").translation, motion.translation, atol=1e-6)

"""Tracking videos and photos end to end: known rigid motion is recovered; the CLI writes what it says and
fails with one clear line and exit status 2 on bad input."""

import json

import cv2
import numpy as np
import pytest
import torch
from matplotlib import cbook
from skimage import data

from models.fitting import world_to_camera
from models.head_model import HEAD_PIVOT
from models.transforms import euler_to_matrix
from pipelines.image_io import load_image, save_image
from pipelines.motion_io import load_identity, load_motion
from pipelines.track import TrackConfig, main, track_frames
from pipelines.video_io import VideoWriter, read_video
from renderers.camera import OPENCV_PIXEL_CENTRE

GRACE = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def grace():
    return load_image(GRACE)


def rigid_clip(image, frames=30, fps=25.0):
    """Frames of `image` rolled (degrees, counter-clockwise) and shifted (pixels) over time, and the motion."""
    t = np.arange(frames) / fps
    roll = 15.0 * np.sin(2 * np.pi * 0.6 * t)
    shift = np.stack([40 * np.sin(2 * np.pi * 0.5 * t), 25 * np.sin(2 * np.pi * 0.4 * t + 1)], 1)
    centre = (268.0, 250.0)
    clip = []
    for k in range(frames):
        m = cv2.getRotationMatrix2D(centre, roll[k], 1.0)
        m[:, 2] += shift[k]
        clip.append(cv2.warpAffine(image, m, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE))
    return clip, roll, shift, np.array(centre)


def test_rigid_motion_of_a_photo_is_recovered_as_roll_and_translation(grace):
    fps = 25.0
    clip, roll, shift, centre = rigid_clip(grace, fps=fps)
    result = track_frames(clip, fps, TrackConfig())
    assert result.motion.num_frames == len(clip) and result.motion.fps == fps
    assert result.found.all()
    rot = euler_to_matrix(
        torch.tensor(np.stack([f.rotation for f in result.fits]), dtype=torch.float64)
    ).numpy()
    turn = rot @ rot[0].T  # rotation since frame 0, in the world (camera-aligned) frame
    world_roll = np.degrees(np.arctan2(turn[:, 1, 0], turn[:, 0, 0]))
    roll_error = world_roll - (roll - roll[0])
    roll_error -= np.median(roll_error)  # frame 0's own error is a constant offset of all the others
    # The image rotates about `centre`: the head turns about the 3D point under it and shifts with the image.
    first = result.fits[0]
    points = result.fitter.points(first.identity, first.expression, first.rotation, first.translation)
    depth = world_to_camera(points)[:, 2].mean()
    cx, cy = first.camera.principal_point(OPENCV_PIXEL_CENTRE)  # landmark pixels, as cv2's centre
    pivot_point = np.array(
        [(centre[0] - cx) * depth / first.focal_px, -(centre[1] - cy) * depth / first.focal_px, -depth]
    )
    expected = []
    for k in range(len(clip)):
        a = np.radians(roll[k] - roll[0])
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        move = (shift[k] - shift[0]) * depth / first.focal_px
        expected.append(
            (rz - np.eye(3)) @ (np.array(HEAD_PIVOT) + first.translation - pivot_point)
            + [move[0], -move[1], 0]
        )
    trans = np.stack([f.translation for f in result.fits])
    trans_error = (trans - trans[0]) - np.array(expected)
    print(
        f"\nroll: max error {np.abs(roll_error).max():.2f} deg, rms {np.sqrt(np.mean(roll_error**2)):.2f} deg "
        f"(motion ±15 deg); translation rms error x/y/z {np.sqrt(np.mean(trans_error**2, 0)).round(2)} cm "
        f"(motion up to {np.abs(expected).max(0).round(1)} cm)"
    )
    assert np.abs(roll_error).max() < 1.0
    assert np.sqrt(np.mean(trans_error[:, :2] ** 2)) < 0.4
    assert np.abs(trans_error[:, :2]).max() < 0.8
    # The motion itself is relative to the clip's median pose: its roll column follows the image roll.
    motion_roll = np.degrees(result.motion.rotation[:, 2])
    assert np.corrcoef(motion_roll, roll)[0, 1] > 0.99
    # A rigid motion leaves the face expression alone.
    assert np.ptp(result.motion["jawOpen"]) < 0.1


def test_cli_on_a_photo_writes_motion_identity_and_overlay(tmp_path, capsys):
    out, ident, overlay = tmp_path / "m.json", tmp_path / "id.json", tmp_path / "check.png"
    assert main([GRACE, "-o", str(out), "--identity", str(ident), "--overlay", str(overlay), "--quiet"]) == 0
    motion = load_motion(out)
    identity = load_identity(ident)
    assert motion.num_frames == 1 and np.abs(motion.rotation).max() == 0
    assert len(identity.coefficients) == 40 and identity.focal_px > 100
    assert identity.image_size == (512, 600) and identity.translation[2] < -20
    drawn = load_image(overlay)
    assert drawn.shape == (600, 512, 3) and np.abs(drawn.astype(int) - load_image(GRACE)).max() > 100


def test_cli_on_a_video_writes_a_motion_at_the_video_frame_rate(tmp_path, grace):
    clip, *_ = rigid_clip(grace, frames=12, fps=20.0)
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, 20.0) as writer:
        for frame in clip:
            writer.write(frame)
    out, overlay = tmp_path / "m.npz", tmp_path / "check.mp4"
    assert main([str(video), "-o", str(out), "--overlay", str(overlay), "--quiet"]) == 0
    motion = load_motion(out)
    assert motion.num_frames == 12 and motion.fps == pytest.approx(20.0, abs=0.5)
    check = read_video(overlay)
    assert check.size == (512, 600) and len(list(check)) == 12


def test_cli_picks_faces_by_index_and_rejects_a_missing_one(tmp_path, grace, capsys):
    canvas = np.full((700, 1000, 3), 200, np.uint8)
    canvas[50:650, 40:552] = grace
    canvas[250:650, 590:990] = cv2.resize(data.astronaut(), (400, 400), interpolation=cv2.INTER_AREA)
    photo = tmp_path / "two.png"
    save_image(canvas, photo)
    ids = []
    for index in (0, 1):
        path = tmp_path / f"id{index}.json"
        assert main([str(photo), "--identity", str(path), "--face-index", str(index), "--quiet"]) == 0
        ids.append(load_identity(path))
    assert ids[0].translation[0] < 0 < ids[1].translation[0]  # left face first (larger), then the right one
    assert main([str(photo), "--identity", str(tmp_path / "x.json"), "--face-index", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--face-index 2" in err[0] and "2 face(s)" in err[0]


def test_cli_reports_no_face_with_exit_status_2(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    save_image(np.full((300, 400, 3), 90, np.uint8), blank)
    assert main([str(blank), "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no face found")
    assert not (tmp_path / "m.json").exists()


def test_cli_reports_a_truncated_photo_and_a_missing_file(tmp_path, capsys):
    whole = open(GRACE, "rb").read()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(whole[: len(whole) // 3])
    assert main([str(broken), "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged or truncated" in err[0]
    assert main([str(tmp_path / "nothing.jpg"), "-o", str(tmp_path / "m.json")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_warns_about_a_small_face(tmp_path, grace, capsys):
    small = tmp_path / "small.png"
    save_image(cv2.resize(grace, (128, 150), interpolation=cv2.INTER_AREA), small)
    code = main([str(small), "-o", str(tmp_path / "m.json"), "--detector", "full", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" in err and "px wide" in err


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert main([GRACE, "-o", str(tmp_path / "m.txt")]) == 2
    assert ".csv" in capsys.readouterr().err
    assert main([GRACE]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert main([GRACE, "-o", str(tmp_path / "missing_dir" / "m.csv")]) == 2


def test_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--identity",
        "--overlay",
        "--face-index",
        "--device",
        "--seed",
        "--detector",
        "--no-smoothing",
    ):
        assert flag in text
    json.dumps(text)  # printable

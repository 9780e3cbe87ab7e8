"""MediaPipe face detection and mesh on real photos: anchors, detection order, crops, tracking, bad input."""

import warnings

import cv2
import numpy as np
import pytest
from matplotlib import cbook
from skimage import data

from models.errors import HeadsplatError
from models.face_tracker import (
    DETECTORS,
    LEFT_EYE_OUTER,
    RIGHT_EYE_OUTER,
    FaceRoi,
    FaceTracker,
    FaceTrackerConfig,
    roi_from_landmarks,
    sample_crop,
    ssd_anchor_centres,
)
from pipelines.image_io import load_image


@pytest.fixture(scope="module")
def tracker():
    return FaceTracker()


@pytest.fixture(scope="module")
def grace():
    return load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


def test_anchor_layouts_match_the_model_outputs():
    short = ssd_anchor_centres(DETECTORS["short"])
    full = ssd_anchor_centres(DETECTORS["full"])
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # Stride 8 (16×16 cells, 2 anchors each) first, then stride 16 (8×8 cells, 6 anchors each).
    np.testing.assert_allclose(short[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[1], short[0])
    np.testing.assert_allclose(short[512], [0.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(short[512 + 6], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(full[1], [1.5 / 48, 0.5 / 48])


@pytest.mark.parametrize("name", ["grace", "astronaut"])
def test_real_photo_has_one_face_with_eyes_inside_its_box(tracker, request, name):
    image = request.getfixturevalue(name)
    faces = tracker.detect(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.8
    x0, y0, x1, y1 = face.box
    right_eye, left_eye = face.keypoints[0], face.keypoints[1]
    for eye in (right_eye, left_eye):
        assert x0 < eye[0] < x1 and y0 < eye[1] < y1
    assert right_eye[0] < left_eye[0], "the subject's right eye appears on the image's left"
    marks = tracker.faces(image)[0]
    assert marks.presence > 0.9
    # Mesh eye corners agree with the detector's eye keypoints (to a third of the eye span).
    centre_r = marks.points[[33, 133], :2].mean(0)
    assert np.linalg.norm(centre_r - right_eye) < 0.35 * marks.inter_ocular


def test_faces_are_ordered_largest_first_and_both_found(tracker, grace, astronaut):
    canvas = np.full((700, 1000, 3), 200, np.uint8)
    canvas[50:650, 40:552] = grace  # face ~200 px wide
    small = cv2.resize(astronaut, (400, 400), interpolation=cv2.INTER_AREA)  # face ~75 px wide
    canvas[250:650, 590:990] = small
    faces = tracker.detect(canvas)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].box[2] < 560 and faces[1].box[0] > 590


def test_blank_image_has_no_face(tracker):
    assert tracker.detect(np.full((480, 640, 3), 127, np.uint8)) == []
    assert tracker.faces(np.zeros((200, 300, 3), np.uint8)) == []


def test_small_face_warns(grace):
    tiny = cv2.resize(grace, (128, 150), interpolation=cv2.INTER_AREA)  # face ~45 px wide
    tracker = FaceTracker(FaceTrackerConfig(detector="full"))
    with pytest.warns(UserWarning, match="px wide"):
        faces = tracker.faces(tiny)
    assert faces


def test_large_face_does_not_warn(tracker, grace):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.faces(grace)


def test_wrong_image_type_is_a_user_error(tracker, grace):
    with pytest.raises(HeadsplatError, match="RGB uint8"):
        tracker.detect(grace.astype(np.float32))
    with pytest.raises(HeadsplatError, match="RGB uint8"):
        tracker.detect(grace[:, :, 0])


def test_crop_maps_back_to_image_coordinates(grace):
    roi = FaceRoi(np.array([250.0, 240.0]), 200.0, np.radians(30))
    crop = sample_crop(grace, roi, 192)
    affine = roi.crop_to_image(192)
    # The crop's pixel (u, v) shows the image pixel affine @ (u, v, 1).
    for u, v in [(20, 30), (96, 96), (150, 170)]:
        x, y = affine @ [u, v, 1]
        assert np.abs(crop[v, u].astype(int) - grace[round(y), round(x)].astype(int)).max() < 40


def test_landmarks_follow_an_in_plane_rotation(tracker, grace):
    marks = tracker.faces(grace)[0]
    h, w = grace.shape[:2]
    centre = marks.points[:, :2].mean(0)
    matrix = cv2.getRotationMatrix2D(tuple(centre), 35, 1.0)  # 35° counter-clockwise
    rotated = cv2.warpAffine(grace, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    turned = tracker.faces(rotated)[0]
    expected = marks.points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    error = np.linalg.norm(turned.points[:, :2] - expected, axis=1).mean()
    assert error < 0.04 * marks.inter_ocular

    def eye_angle(points):  # degrees, counter-clockwise in the image
        line = points[LEFT_EYE_OUTER, :2] - points[RIGHT_EYE_OUTER, :2]
        return np.degrees(np.arctan2(-line[1], line[0]))

    assert eye_angle(turned.points) - eye_angle(marks.points) == pytest.approx(35, abs=2)
    roi = roi_from_landmarks(turned.points)
    assert -np.degrees(roi.angle) == pytest.approx(eye_angle(turned.points), abs=0.5)


def test_video_tracking_reuses_the_crop_and_redetects_after_loss(grace):
    tracker = FaceTracker()
    blank = np.zeros_like(grace)
    results = [tracker.track(frame) for frame in [grace] * 4]
    assert all(r is not None and r.presence > 0.9 for r in results)
    assert tracker.redetections == 1  # only the first frame ran the detector
    assert tracker.track(blank) is None  # face lost: presence drops, detector finds nothing
    again = tracker.track(grace)
    assert again is not None and tracker.redetections == 3
    np.testing.assert_allclose(again.points[:, :2], results[0].points[:, :2], atol=0.03 * again.inter_ocular)


def test_face_index_beyond_the_faces_found_is_a_user_error(grace):
    with pytest.raises(HeadsplatError, match="face index 3"):
        FaceTracker().track(grace, face_index=3)


def test_very_large_photo_gives_full_resolution_coordinates(tracker, grace):
    big = cv2.resize(grace, None, fx=6, fy=6, interpolation=cv2.INTER_CUBIC)  # 3072 × 3600
    small = tracker.faces(grace)[0]
    large = tracker.faces(big)[0]
    error = np.linalg.norm(large.points[:, :2] / 6 - small.points[:, :2], axis=1).mean()
    assert error < 0.02 * small.inter_ocular
    assert large.inter_ocular == pytest.approx(6 * small.inter_ocular, rel=0.03)


def test_face_alignment_backend_needs_weights_on_disk_and_its_package(tmp_path, monkeypatch):
    import sys

    import torch

    from models.face_tracker import FaceAlignmentLandmarker

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(HeadsplatError, match="weights not found"):
        FaceAlignmentLandmarker()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "2DFAN4-cd938726ad.zip").write_bytes(b"x")
    (tmp_path / "checkpoints" / "s3fd-619a316812.pth").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # as if not installed
    with pytest.raises(HeadsplatError, match="pip install face-alignment"):
        FaceAlignmentLandmarker()

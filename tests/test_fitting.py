"""Fitting the ICT head to landmarks: synthetic ground truth, real photos, camera convention, smoothing."""

import math

import numpy as np
import pytest
import torch
from matplotlib import cbook
from skimage import data

from models.errors import HeadsplatError
from models.face_tracker import FaceTracker
from models.fitting import (
    Camera,
    FaceFitter,
    FitConfig,
    OneEuroFilter,
    compose_pose,
    project,
    relative_pose,
    smooth_landmarks,
    world_to_camera,
)
from models.head_model import HeadModel
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS
from models.transforms import euler_to_matrix, euler_to_matrix_and_derivatives
from pipelines.image_io import load_image

CHECKED = ("jawOpen", "eyeBlink_L", "eyeBlink_R", "mouthSmile_L", "mouthSmile_R")
NOISE_PX = 0.5


@pytest.fixture(scope="module")
def head():
    return HeadModel(num_identity=50)


@pytest.fixture(scope="module")
def fitter(head):
    # Synthetic landmarks carry 0.5 px noise on a ~150 px eye span: tell the fitter (≈0.4% of it).
    return FaceFitter(FitConfig(landmark_noise=0.004), head=head)


def synthetic_landmarks(head, fitter, identity, expression, rotation, translation, camera, rng):
    """MediaPipe-like landmarks [468, 3] of an ICT head seen by `camera`, with pixel noise on x and y."""
    ident = torch.zeros(1, 50)
    ident[0, : len(identity)] = torch.as_tensor(identity, dtype=torch.float32)
    verts = (
        head.vertices(
            ident,
            torch.as_tensor(expression, dtype=torch.float32)[None],
            torch.as_tensor(rotation, dtype=torch.float32)[None],
            torch.as_tensor(translation, dtype=torch.float32)[None],
        )[0]
        .double()
        .numpy()
    )
    points = np.einsum("mkc,mk->mc", verts[fitter.triangle], fitter.barycentric)
    uv = project(points, camera) + rng.normal(0.0, NOISE_PX, (len(points), 2))
    depth = world_to_camera(points)[:, 2]
    marks = np.zeros((468, 3))
    marks[fitter.landmark_index, :2] = uv
    marks[fitter.landmark_index, 2] = camera.fx / depth.mean() * (depth - depth.mean())
    return marks


def scene(seed):
    rng = np.random.default_rng(seed)
    identity = rng.normal(0.0, 1.0, 40)
    expression = np.zeros(NUM_EXPRESSIONS)
    for name in CHECKED:
        expression[EXPRESSION_INDEX[name]] = rng.uniform(0.0, 0.8)
    rotation = np.radians(rng.uniform([-15, -30, -15], [15, 30, 15]))
    translation = np.array([rng.uniform(-3, 3), rng.uniform(-3, 3), -rng.uniform(45, 60)])
    return rng, identity, expression, rotation, translation


def identity_error_cm(head, a, b):
    def mesh(c):
        ident = torch.zeros(1, 50)
        ident[0, : len(c)] = torch.as_tensor(c, dtype=torch.float32)
        return head.vertices(ident, torch.zeros(1, NUM_EXPRESSIONS))[0]

    face = head.region_vertices("face")
    return float((mesh(a) - mesh(b))[face].norm(dim=1).mean())


@pytest.mark.parametrize("seed", [0, 3])
def test_synthetic_landmarks_are_fitted_back(head, fitter, seed):
    rng, identity, expression, rotation, translation = scene(seed)
    camera = Camera.photo(1100.0, 640, 480)
    marks = synthetic_landmarks(head, fitter, identity, expression, rotation, translation, camera, rng)
    fit = fitter.fit_image(marks, (640, 480))
    angle_error = np.degrees(np.abs(fit.rotation - rotation))
    expression_error = {
        n: abs(float(fit.expression[EXPRESSION_INDEX[n]] - expression[EXPRESSION_INDEX[n]])) for n in CHECKED
    }
    mesh_error = identity_error_cm(head, identity, fit.identity)
    print(
        f"\nseed {seed}: pitch/yaw/roll error {np.round(angle_error, 3)} deg, expression error "
        f"{ {k: round(v, 3) for k, v in expression_error.items()} }, identity mesh error {mesh_error:.3f} cm, "
        f"focal {fit.focal_px:.0f} (true {camera.fx:.0f}), landmark error {fit.error_px:.2f} px"
    )
    assert angle_error.max() < 1.0
    assert max(expression_error.values()) < 0.05
    assert mesh_error < 0.15
    assert fit.focal_px == pytest.approx(camera.fx, rel=0.1)
    # Shapes that were not used stay near zero.
    unused = np.ones(NUM_EXPRESSIONS, bool)
    unused[[EXPRESSION_INDEX[n] for n in CHECKED]] = False
    assert fit.expression[unused].max() < 0.15


def test_several_frames_share_one_identity_and_pin_it_better(head, fitter):
    rng, identity, *_ = scene(5)
    camera = Camera.photo(900.0, 640, 480)
    frames, truths = [], []
    for k in range(4):
        _, _, expression, rotation, translation = scene(10 + k)
        truths.append((expression, rotation))
        frames.append(
            synthetic_landmarks(head, fitter, identity, expression, rotation, translation, camera, rng)
        )
    fits = fitter.fit_frames(frames, (640, 480))
    assert all(np.array_equal(f.identity, fits[0].identity) for f in fits)
    joint = identity_error_cm(head, identity, fits[0].identity)
    single = np.mean(
        [identity_error_cm(head, identity, fitter.fit_image(m, (640, 480)).identity) for m in frames]
    )
    print(
        f"\nidentity mesh error: {joint:.3f} cm from 4 frames jointly, {single:.3f} cm from one frame (mean)"
    )
    assert joint < single
    checked = [EXPRESSION_INDEX[n] for n in CHECKED]
    for fit, (expression, rotation) in zip(fits, truths):
        assert np.degrees(np.abs(fit.rotation - rotation)).max() < 1.0
        # Up to 30° of yaw foreshortens the far eye: its blink is a little less certain than in the tests above.
        assert np.abs(fit.expression - expression)[checked].max() < 0.06
        # Near a closed eye, eyeWide barely moves the lid points any more: it is the one loosely pinned shape.
        assert np.abs(fit.expression - expression).max() < 0.25


def test_tracking_step_follows_a_new_expression_with_identity_fixed(head, fitter):
    rng, identity, expression, rotation, translation = scene(1)
    camera = Camera.photo(1000.0, 640, 480)
    first = fitter.fit_image(
        synthetic_landmarks(head, fitter, identity, expression, rotation, translation, camera, rng),
        (640, 480),
    )
    moved = expression.copy()
    moved[EXPRESSION_INDEX["jawOpen"]] = min(1.0, moved[EXPRESSION_INDEX["jawOpen"]] + 0.3)
    turned = rotation + np.radians([2.0, -4.0, 3.0])
    marks = synthetic_landmarks(head, fitter, identity, moved, turned, translation + [0.5, 0, 0], camera, rng)
    step = fitter.track(marks, first)
    np.testing.assert_array_equal(step.identity, first.identity)
    assert step.focal_px == first.focal_px
    assert step.expression[EXPRESSION_INDEX["jawOpen"]] == pytest.approx(
        moved[EXPRESSION_INDEX["jawOpen"]], abs=0.05
    )
    assert np.degrees(np.abs(step.rotation - turned)).max() < 1.0


def test_projection_convention():
    camera = Camera.photo(1000.0, 641, 481)
    ahead = np.array([[0.0, 0.0, -50.0], [1.0, 0.0, -50.0], [0.0, 1.0, -50.0]])
    uv = project(ahead, camera)
    np.testing.assert_allclose(uv[0], [320.0, 240.0])  # straight ahead → image centre
    assert uv[1, 0] == pytest.approx(340.0) and uv[1, 1] == pytest.approx(
        240.0
    )  # +x (subject's left) → right
    assert uv[2, 1] == pytest.approx(220.0)  # +y (up) → up in the image
    np.testing.assert_allclose(project(torch.from_numpy(ahead), camera).numpy(), uv)
    np.testing.assert_allclose(world_to_camera(ahead)[0], [0, 0, 50])


def test_fitted_mesh_of_a_frontal_face_faces_the_camera(head, fitter):
    rng, identity, expression, _, _ = scene(2)
    camera = Camera.photo(1000.0, 640, 480)
    marks = synthetic_landmarks(
        head, fitter, identity, expression, np.zeros(3), np.array([0, 0, -50.0]), camera, rng
    )
    fit = fitter.fit_image(marks, (640, 480))
    verts = head.vertices(
        torch.zeros(1, 50),
        torch.zeros(1, 53),
        torch.from_numpy(fit.rotation)[None],
        torch.from_numpy(fit.translation)[None],
    )
    nose = project(verts[0, head.landmarks68[30]].numpy(), fit.camera)
    assert abs(nose[0] - 319.5) < 10  # the nose tip lands near the image centre


def test_pose_composition_round_trips():
    rest_r, rest_t = np.radians([5.0, 20.0, -3.0]), np.array([1.0, 2.0, -50.0])
    rel_r = np.radians([[10.0, 0.0, 0.0], [0.0, -15.0, 4.0]])
    rel_t = np.array([[0.5, 0.0, 0.0], [0.0, -1.0, 2.0]])
    abs_r, abs_t = compose_pose(rest_r, rest_t, rel_r, rel_t)
    back_r, back_t = relative_pose(rest_r, rest_t, abs_r, abs_t)
    np.testing.assert_allclose(back_r, rel_r, atol=1e-5)
    np.testing.assert_allclose(back_t, rel_t, atol=1e-5)
    zero_r, _ = compose_pose(rest_r, rest_t, np.zeros(3), np.zeros(3))
    np.testing.assert_allclose(zero_r, rest_r, atol=1e-6)


def test_solver_rotation_derivatives_match_the_rotation_and_finite_differences():
    angles = np.radians([12.0, -25.0, 7.0])
    rot, drot = euler_to_matrix_and_derivatives(angles)
    np.testing.assert_allclose(rot, euler_to_matrix(torch.from_numpy(angles)).numpy(), atol=1e-12)
    for i in range(3):
        step = np.zeros(3)
        step[i] = 1e-6
        numeric = (
            euler_to_matrix_and_derivatives(angles + step)[0]
            - euler_to_matrix_and_derivatives(angles - step)[0]
        ) / 2e-6
        np.testing.assert_allclose(drot[i], numeric, atol=1e-8)


@pytest.fixture(scope="module")
def photos():
    grace = load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return {"grace_hopper": grace, "astronaut": data.astronaut()}


@pytest.mark.parametrize("name", ["grace_hopper", "astronaut"])
def test_real_photo_fit_matches_the_detected_landmarks(head, photos, name):
    image = photos[name]
    marks = FaceTracker().faces(image)[0]
    fitter = FaceFitter(head=head)
    fit = fitter.fit_image(marks.points, (image.shape[1], image.shape[0]))
    print(
        f"\n{name}: mean landmark error {100 * fit.relative_error:.2f}% of the inter-ocular distance "
        f"({fit.error_px:.2f} px), rotation {np.round(np.degrees(fit.rotation), 1)} deg, focal {fit.focal_px:.0f} px"
    )
    assert fit.relative_error <= 0.015
    assert np.abs(np.degrees(fit.rotation)).max() < 20  # both are near-frontal portraits
    assert -400 < fit.translation[2] < -20  # in front of the camera at a plausible distance
    assert np.linalg.norm(fit.identity) < 4 * math.sqrt(len(fit.identity))
    identity = fit.to_identity()
    assert identity.focal_px == fit.focal_px and identity.image_size == (image.shape[1], image.shape[0])


def test_bad_landmarks_are_user_errors(fitter):
    with pytest.raises(HeadsplatError, match="468"):
        fitter.fit_image(np.zeros((68, 2)), (100, 100))
    bad = np.zeros((468, 3))
    bad[0, 0] = np.nan
    with pytest.raises(HeadsplatError, match="NaN"):
        fitter.fit_image(bad, (100, 100))


def test_one_euro_removes_jitter_of_a_still_point_and_keeps_up_with_fast_motion():
    rng = np.random.default_rng(0)
    fps = 30.0
    t = np.arange(120) / fps
    still = 0.01 * rng.normal(size=len(t))
    filt = OneEuroFilter()
    out = np.array([filt(np.array([v]), 1 / fps)[0] for v in still])
    assert out[10:].std() < 0.5 * still[10:].std()
    # A 4 Hz jaw-like swing of 0.3 eye spans: the zero-phase smoother has no lag and keeps the amplitude.
    swing = 0.3 * np.sin(2 * np.pi * 4 * t)
    seq = np.zeros((len(t), 468, 3))
    seq[:, 263, 0] = 1.0  # eye span of 1 unit
    seq[:, 0, 1] = swing + 0.005 * rng.normal(size=len(t))
    smooth = smooth_landmarks(seq, fps)[:, 0, 1]
    lags = range(-3, 4)
    best = max(lags, key=lambda k: np.dot(np.roll(smooth, k)[10:-10], swing[10:-10]))
    assert best == 0
    assert np.abs(smooth - swing)[10:-10].max() < 0.06  # within a fifth of the swing's amplitude


def test_68_point_landmarks_are_fitted_with_ict_landmark_vertices(head):
    fitter68 = FaceFitter(FitConfig(landmark_noise=0.004), head=head, scheme="ibug68")
    rng, identity, expression, rotation, translation = scene(4)
    camera = Camera.photo(1000.0, 640, 480)
    ident = torch.zeros(1, 50)
    ident[0, :40] = torch.as_tensor(identity, dtype=torch.float32)
    verts = head.vertices(
        ident,
        torch.as_tensor(expression, dtype=torch.float32)[None],
        torch.as_tensor(rotation, dtype=torch.float32)[None],
        torch.as_tensor(translation, dtype=torch.float32)[None],
    )
    marks = project(head.landmarks(verts)[0].double().numpy(), camera) + rng.normal(0, NOISE_PX, (68, 2))
    fit = fitter68.fit_image(marks, (640, 480))
    print(
        f"\n68 points: rotation error {np.round(np.degrees(np.abs(fit.rotation - rotation)), 2)} deg, "
        f"jawOpen error {abs(fit.expression[EXPRESSION_INDEX['jawOpen']] - expression[EXPRESSION_INDEX['jawOpen']]):.3f}"
    )
    # 68 points without depth pin the head less tightly than the 468-point mesh: looser bounds.
    assert np.degrees(np.abs(fit.rotation - rotation)).max() < 2.0
    assert abs(fit.expression[EXPRESSION_INDEX["jawOpen"]] - expression[EXPRESSION_INDEX["jawOpen"]]) < 0.1
    with pytest.raises(HeadsplatError, match=r"\[68, 2\|3\]; got \[468, 3\]"):
        fitter68.fit_image(np.zeros((468, 3)), (640, 480))


def test_gaze_follows_the_iris_centres(head, photos):
    image = photos["astronaut"]
    marks = FaceTracker().faces(image)[0]
    assert marks.iris is not None and marks.iris.shape == (2, 2)
    fitter = FaceFitter(head=head)
    fit = fitter.fit_image(marks.with_iris(), (image.shape[1], image.shape[0]))

    def look(name):
        return float(fit_shifted.expression[EXPRESSION_INDEX[name]] - fit.expression[EXPRESSION_INDEX[name]])

    # She looks at the camera: every eye turn is small.
    looks = [n for n in EXPRESSION_INDEX if n.startswith("eyeLook")]
    assert max(fit.expression[EXPRESSION_INDEX[n]] for n in looks) < 0.35
    step = 0.08 * marks.inter_ocular  # about 10° of eye turn
    # Both irises move to the image's right = towards the subject's left: left eye looks out, right eye in.
    fit_shifted = fitter.fit_gaze(fit, marks.iris + [step, 0])
    assert look("eyeLookOut_L") > 0.15 and look("eyeLookIn_R") > 0.15
    # Irises move up in the image: both eyes look up.
    fit_shifted = fitter.fit_gaze(fit, marks.iris - [0, step])
    assert (
        look("eyeLookUp_L") + look("eyeLookDown_L") * -1 > 0.15
        and look("eyeLookUp_R") - look("eyeLookDown_R") > 0.15
    )
    # Gaze changes nothing else.
    rest = [i for n, i in EXPRESSION_INDEX.items() if not n.startswith("eyeLook")]
    np.testing.assert_array_equal(fit_shifted.expression[rest], fit.expression[rest])

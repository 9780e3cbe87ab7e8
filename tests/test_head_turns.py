"""Head turns (issue #16): the hair shell, the still collar, the neck's blend, no holes at ±20° of yaw, and
a default motion that moves the head as real speakers do."""

import math

import cv2
import numpy as np
import pytest
import torch

from models.gaussian_avatar import PortraitAvatarConfig, build_portrait_avatar
from models.head_model import HeadModel
from models.photo_view import project_points
from models.portrait_build import REGION_ID, triangle_labels
from models.segmentation import person_matte
from pipelines.portrait import DEFAULT_PORTRAIT, fit_portrait, load_portrait
from renderers.mesh_raster import rasterize_mesh

SIZE = 256


@pytest.fixture(scope="module")
def head():
    return HeadModel()


@pytest.fixture(scope="module")
def photo():
    return load_portrait(DEFAULT_PORTRAIT)


@pytest.fixture(scope="module")
def avatar(head, photo):
    fit = fit_portrait(photo)
    return build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=SIZE)
    )


def _turn(yaw_deg: float, pitch_deg: float = 0.0) -> torch.Tensor:
    return torch.tensor([math.radians(pitch_deg), math.radians(yaw_deg), 0.0])


def _alpha(avatar, rotation):
    """Alpha [S, S] of the moving layer as it is composited (`render_layers`)."""
    return avatar.render_layers(avatar.photo_offset(), rotation, torch.zeros(3), backend="cpu")[1]


def test_the_person_matte_separates_the_sitter_from_the_flag(photo):
    matte = person_matte(photo)
    assert matte.shape == photo.shape[:2] and matte.dtype == np.float32
    height, width = matte.shape
    assert matte[int(0.45 * height), width // 2] > 0.9  # the face
    assert matte[int(0.1 * height), width // 2] > 0.9  # the hat
    assert matte[: height // 10, : width // 10].mean() < 0.1  # the flag, top left
    assert matte[: height // 10, -width // 10 :].mean() < 0.1  # the sky, top right


def test_the_hair_shell_turns_with_the_head_and_stays_opaque(avatar):
    moving = avatar.rigid_weights > 0.99
    assert moving.sum() > 1000, "the hat and hair above the jaw follow the head fully"
    for yaw in (-20.0, 20.0):
        rotation = _turn(yaw)
        rot, shift = avatar.rigid_transform(rotation[None], torch.zeros(1, 3))
        posed = avatar.rigid_means[moving] @ rot[0].T + shift[0]
        xy = project_points(posed, avatar.camera)[:, :2].floor().long().numpy()
        inside = np.zeros((SIZE, SIZE), np.uint8)
        ok = ((xy >= 0) & (xy < SIZE)).all(1)
        inside[xy[ok, 1], xy[ok, 0]] = 1
        inside = cv2.morphologyEx(inside, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        inside = cv2.erode(inside, np.ones((3, 3), np.uint8)) > 0
        alpha = _alpha(avatar, rotation)
        assert inside.sum() > 500
        assert (alpha[inside] >= 0.99).mean() > 0.98, f"the turned hair lets the background through ({yaw})"


def test_nothing_inside_the_turned_head_is_transparent(avatar, head):
    labels = triangle_labels(head)
    outer = head.triangles.numpy()[np.isin(labels, [REGION_ID["face"], REGION_ID["head_and_neck"]])]
    for yaw, pitch in ((-20.0, 0.0), (20.0, 0.0), (0.0, 10.0), (0.0, -10.0)):
        rotation = _turn(yaw, pitch)
        vertices = avatar.mesh(avatar.photo_offset()[None], rotation[None], torch.zeros(1, 3))[0]
        frags = rasterize_mesh(project_points(vertices, avatar.camera).numpy(), outer, SIZE, SIZE)
        inside = cv2.erode((frags.triangle >= 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        alpha = _alpha(avatar, rotation)
        assert (alpha[inside] >= 0.99).mean() > 0.99, f"holes in the head at yaw {yaw}, pitch {pitch}"


def test_the_neck_blends_into_the_body_without_a_tear(avatar, head):
    # Every edge of the mesh keeps its length within 35% at 20 degrees of yaw: the neck twists, nothing
    # tears. Along the neck the blend weight changes smoothly from the head's to the body's.
    edges = torch.cat([head.triangles[:, [0, 1]], head.triangles[:, [1, 2]], head.triangles[:, [2, 0]]])
    rest = avatar.rest_mesh()
    for yaw in (-20.0, 20.0):
        posed = avatar.mesh(avatar.photo_offset()[None], _turn(yaw)[None], torch.zeros(1, 3))[0]
        before = (rest[edges[:, 0]] - rest[edges[:, 1]]).norm(dim=-1)
        after = (posed[edges[:, 0]] - posed[edges[:, 1]]).norm(dim=-1)
        ratio = after / before.clamp_min(1e-6)
        assert ratio.max() < 1.35 and ratio.min() > 0.65
    w = avatar.vertex_weights
    assert w.min() == 0.0 and w.max() == 1.0, "the head's motion fades out down the neck"
    # The hair follows the same blend at its height: long hair on the shoulders moves less than at the top.
    assert (
        avatar.rigid_weights.max() == 1.0 and ((avatar.rigid_weights > 0) & (avatar.rigid_weights < 1)).any()
    )


def test_the_collar_stays_still_when_the_head_turns(avatar):
    still = avatar.rigid_weights == 0
    assert still.sum() > 200, "the collar on the fitted neck is held still"
    g_rest = avatar.gaussians(avatar.photo_offset(), torch.zeros(3), torch.zeros(3))
    g_turn = avatar.gaussians(avatar.photo_offset(), _turn(20.0), torch.zeros(3))
    face = len(avatar.binding) - avatar.num_mouth
    rows = torch.arange(face, face + len(avatar.rigid_means))[still]
    assert torch.equal(g_rest.means[rows], g_turn.means[rows])


def test_default_motion_moves_the_head_like_a_speaker():
    from pipelines.audio_io import load_audio
    from pipelines.drivers import speech_motion
    from pipelines.talk import DEFAULT_AUDIO, TalkConfig

    rotation = np.degrees(speech_motion(load_audio(DEFAULT_AUDIO), TalkConfig()).rotation)
    pitch, yaw, _ = rotation.std(0)
    assert yaw >= 3.0 and pitch >= 2.0, (pitch, yaw)
    still = np.degrees(speech_motion(load_audio(DEFAULT_AUDIO), TalkConfig(pose_scale=0.5)).rotation)
    assert np.allclose(still, 0.5 * rotation, atol=1e-4), "--pose-scale scales the default motion"


def test_the_layer_is_solid_where_the_gaussians_cover_it():
    from models.gaussian_avatar import SOLID_ALPHA, solid_layer

    alpha = np.array([[0.0, 0.45, SOLID_ALPHA, 0.97]], np.float32)
    rgb = alpha[..., None] * np.array([0.2, 0.4, 0.6], np.float32)  # premultiplied
    out_rgb, out_alpha = solid_layer(rgb, alpha)
    assert np.allclose(out_alpha, [[0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    # The colour stays the same colour, premultiplied by the new alpha.
    assert np.allclose(out_rgb[0, 1:], out_alpha[0, 1:, None] * [0.2, 0.4, 0.6], atol=1e-6)
    assert np.all(out_rgb[0, 0] == 0)

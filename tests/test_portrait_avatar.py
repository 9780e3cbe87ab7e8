"""The portrait avatar: reproduces the photo at rest, opens its mouth onto teeth, blinks, turns, saves."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.gaussian_avatar import (
    PortraitAvatar,
    PortraitAvatarConfig,
    build_portrait_avatar,
    crop_image,
    project_points,
)
from models.head_model import HeadModel
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS, Identity
from renderers.mesh_raster import rasterize_mesh

PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "defaults" / "portrait.jpg"
SIZE = 256


@pytest.fixture(scope="module")
def head():
    return HeadModel()


@pytest.fixture(scope="module")
def photo():
    return np.asarray(Image.open(PORTRAIT).convert("RGB"))


@pytest.fixture(scope="module")
def avatar(head, photo):
    # A hand-placed head roughly over the shipped portrait's face; the avatar itself does not care
    # whether the fit is good, only that it is consistent.
    identity = Identity(
        np.zeros(50), [0.0, 0.0, 0.0], [0.0, -1.0, -62.0], 1000.0, (photo.shape[1], photo.shape[0])
    )
    return build_portrait_avatar(
        photo, identity, np.zeros(NUM_EXPRESSIONS), head, PortraitAvatarConfig(crop_size=SIZE)
    )


@pytest.fixture(scope="module")
def turned(avatar):
    # The same avatar with its head turned and moved at rest, so that composing poses in the wrong order
    # (or forgetting the rest pose) shows.
    from dataclasses import replace

    return replace(
        avatar,
        rest_rotation=torch.tensor([[0.15, -0.3, 0.1]]),
        rest_translation=torch.tensor([[0.5, -1.0, -62.0]]),
    )


def _frame(avatar, **shapes):
    expression = torch.zeros(NUM_EXPRESSIONS)
    for name, value in shapes.items():
        expression[EXPRESSION_INDEX[name]] = value
    return expression


def _region_pixels(avatar, head, region):
    points = project_points(avatar.rest_mesh(), avatar.camera).numpy()
    frags = rasterize_mesh(points, head.triangles.numpy(), SIZE, SIZE)
    return np.isin(frags.triangle, head.region_triangles(region).numpy())


def _psnr(a, b):
    return 10 * np.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12))


def test_neutral_motion_reproduces_the_portrait_inside_the_face(avatar, head, photo):
    zero = torch.zeros(3)
    rendered = avatar.render(torch.zeros(NUM_EXPRESSIONS), zero, zero, backend="cpu")
    crop = crop_image(photo, avatar.crop_box, SIZE)
    face = _region_pixels(avatar, head, "face")
    assert face.sum() > 2000
    assert _psnr(rendered[face], crop[face]) >= 30.0
    # The whole crop (background layer included) matches as well.
    assert _psnr(rendered, crop) >= 30.0


def test_opening_the_jaw_shows_a_dark_mouth_interior_with_teeth(avatar, head):
    zero = torch.zeros(3)
    closed = avatar.render(torch.zeros(NUM_EXPRESSIONS), zero, zero, backend="cpu")
    opened = avatar.render(_frame(avatar, jawOpen=0.8), zero, zero, backend="cpu")
    # Where the open mouth is: the mouth socket as seen at the open pose.
    expression = _frame(avatar, jawOpen=0.8)[None]
    mesh = avatar.mesh(expression, torch.zeros(1, 3), torch.zeros(1, 3))[0]
    points = project_points(mesh, avatar.camera).numpy()
    frags = rasterize_mesh(points, head.triangles.numpy(), SIZE, SIZE)
    inside = np.isin(
        frags.triangle,
        torch.cat([head.region_triangles(n) for n in ("teeth", "gums_and_tongue", "mouth_socket")]).numpy(),
    )
    assert inside.sum() > 30, "the open jaw should expose the mouth interior"
    changed = np.abs(opened - closed).sum(-1)[inside]
    assert np.median(changed) > 0.15
    teeth = np.isin(frags.triangle, head.region_triangles("teeth").numpy())
    assert teeth.sum() > 5, "the open jaw should show teeth"
    assert opened[teeth].mean() > opened[inside & ~teeth].mean()


def test_blinking_covers_the_eyes_with_lid_colours(avatar, head):
    zero = torch.zeros(3)
    open_eyes = avatar.render(torch.zeros(NUM_EXPRESSIONS), zero, zero, backend="cpu")
    closed = avatar.render(_frame(avatar, eyeBlink_L=1.0, eyeBlink_R=1.0), zero, zero, backend="cpu")
    irises = _region_pixels(avatar, head, "eyeball_left") | _region_pixels(avatar, head, "eyeball_right")
    assert irises.sum() > 10
    changed = np.abs(closed - open_eyes).sum(-1)[irises]
    assert np.median(changed) > 0.05
    # Nothing is left uncovered: the render stays opaque over the eyes.
    out = avatar.gaussians(_frame(avatar, eyeBlink_L=1.0, eyeBlink_R=1.0), zero, zero)
    from renderers import rasterize

    alpha = rasterize(out, avatar.camera, backend="cpu").alpha.numpy()
    assert alpha[irises].min() > 0.97


def test_turning_the_head_moves_the_face_and_leaves_the_far_background(avatar):
    zero = torch.zeros(3)
    rest = avatar.render(torch.zeros(NUM_EXPRESSIONS), zero, zero, backend="cpu")
    turned = avatar.render(torch.zeros(NUM_EXPRESSIONS), torch.tensor([0.0, 0.3, 0.0]), zero, backend="cpu")
    moving = avatar.moving_mask > 0
    assert np.abs(turned - rest)[moving].mean() > 0.02
    far = ~moving
    assert np.abs(turned - rest)[far].max() < 1e-5


def test_state_round_trip_renders_the_same(avatar, head):
    tensors, meta = avatar.state()
    again = PortraitAvatar.from_state({k: v.clone() for k, v in tensors.items()}, meta, head)
    frame = _frame(avatar, jawOpen=0.4, mouthSmile_L=0.5)
    pose = torch.tensor([0.05, -0.1, 0.02])
    a = avatar.render(frame, pose, torch.zeros(3), backend="cpu")
    b = again.render(frame, pose, torch.zeros(3), backend="cpu")
    assert np.array_equal(a, b)


def test_pose_composes_like_the_face_tracker(turned):
    from models.fitting import compose_pose

    avatar = turned

    rotation, translation = np.array([0.1, -0.2, 0.05], np.float32), np.array([1.0, -0.5, 2.0], np.float32)
    world_r, world_t = compose_pose(
        avatar.rest_rotation[0].numpy(), avatar.rest_translation[0].numpy(), rotation, translation
    )
    expected = avatar.head.pose(
        avatar.head.shape(avatar.identity, avatar.rest_expression),
        torch.from_numpy(np.asarray(world_r, np.float32))[None],
        torch.from_numpy(np.asarray(world_t, np.float32))[None],
    )[0]
    got = avatar.mesh(
        torch.zeros(1, NUM_EXPRESSIONS), torch.from_numpy(rotation)[None], torch.from_numpy(translation)[None]
    )[0]
    head_part = avatar.vertex_weights == 1  # below that the neck blends towards the body on purpose
    torch.testing.assert_close(got[head_part], expected[head_part], atol=1e-3, rtol=1e-4)
    # The rigid band moves like the head part of the mesh.
    rot, shift = avatar.rigid_transform(torch.from_numpy(rotation)[None], torch.from_numpy(translation)[None])
    rest = avatar.rest_mesh()[head_part]
    torch.testing.assert_close(rest @ rot[0].T + shift[0], got[head_part], atol=1e-3, rtol=1e-4)


def test_cpu_frame_poses_the_head_like_compose_pose(turned):
    from models.fitting import compose_pose
    from models.mesh_binding import MeshBinding

    avatar = turned

    rotation, translation = np.array([0.1, -0.2, 0.05], np.float32), np.array([1.0, -0.5, 2.0], np.float32)
    world_r, world_t = compose_pose(
        avatar.rest_rotation[0].numpy(), avatar.rest_translation[0].numpy(), rotation, translation
    )
    head = avatar.head
    expected_mesh = head.pose(
        head.shape(avatar.identity, avatar.rest_expression),
        torch.from_numpy(np.asarray(world_r, np.float32))[None],
        torch.from_numpy(np.asarray(world_t, np.float32))[None],
    )[0]
    expected, _, _ = MeshBinding.pose_torch(avatar.binding, expected_mesh, head.triangles)
    # The CPU path: numba kernels pose the mesh and the bound Gaussians.
    frame = avatar.gaussians(
        torch.zeros(NUM_EXPRESSIONS), torch.from_numpy(rotation), torch.from_numpy(translation)
    )
    face = len(avatar.binding) - avatar.num_mouth
    on_head = (avatar.vertex_weights[head.triangles[avatar.binding.triangle[:face]]] == 1).all(-1)
    assert on_head.float().mean() > 0.8  # the neck below blends towards the body on purpose
    torch.testing.assert_close(frame.means[:face][on_head], expected[:face][on_head], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("jaw", [0.0, 0.6])
def test_cpu_kernels_pose_the_frame_like_the_torch_path(avatar, jaw, monkeypatch):
    from models.mesh_binding import MeshBinding

    expression = _frame(avatar, jawOpen=jaw, mouthSmile_L=0.3, eyeBlink_R=0.5)
    rotation, translation = torch.tensor([0.08, -0.15, 0.04]), torch.tensor([0.4, -0.3, 0.6])
    fast = avatar.gaussians(expression, rotation, translation)
    with monkeypatch.context() as m:  # the reference all in torch, binding included
        m.setattr(MeshBinding, "pose", MeshBinding.pose_torch)
        slow = avatar.gaussians_torch(expression, rotation, translation)
    face = len(avatar.binding) - avatar.num_mouth
    expected = face + len(avatar.rigid_means) + (avatar.num_mouth if jaw > 0 else 0)
    assert len(fast.means) == len(slow.means) == expected
    torch.testing.assert_close(fast.means, slow.means, atol=2e-4, rtol=0)
    torch.testing.assert_close(fast.scales, slow.scales, atol=1e-5, rtol=1e-4)
    assert torch.equal(fast.opacities, slow.opacities) and torch.equal(fast.colors, slow.colors)
    # Rotations: ICT's sliver triangles make frames sensitive to the last bit of the vertices; compare
    # each pair as the angle between them (q and -q are the same rotation).
    dot = (fast.quats * slow.quats).sum(-1).abs().clamp(max=1)
    angle = torch.rad2deg(2 * torch.acos(dot))
    assert float(torch.quantile(angle, 0.999)) < 0.5 and float(angle.median()) < 1e-2


def test_colour_changes_reach_the_cpu_path(avatar):
    zero = torch.zeros(3)
    before = avatar.gaussians(torch.zeros(NUM_EXPRESSIONS), zero, zero).colors.clone()
    original = avatar.bound_colors
    try:
        avatar.bound_colors = original * 0.5  # a new tensor, as colour refinement makes
        after = avatar.gaussians(torch.zeros(NUM_EXPRESSIONS), zero, zero).colors
        face = len(avatar.binding) - avatar.num_mouth
        torch.testing.assert_close(after[:face], before[:face] * 0.5)
    finally:
        avatar.bound_colors = original


def test_frames_can_be_made_from_several_threads_at_once(avatar):
    from concurrent.futures import ThreadPoolExecutor

    zero = torch.zeros(3)
    poses = [torch.tensor([0.0, 0.05 * k, 0.0]) for k in range(6)]
    with ThreadPoolExecutor(3) as pool:
        frames = list(
            pool.map(lambda r: avatar.render(torch.zeros(NUM_EXPRESSIONS), r, zero, backend="cpu"), poses)
        )
    for r, frame in zip(poses, frames):
        np.testing.assert_array_equal(
            frame, avatar.render(torch.zeros(NUM_EXPRESSIONS), r, zero, backend="cpu")
        )


def test_automatic_crop_size_is_the_crop_box_in_photo_pixels(head, photo):
    from models.gaussian_avatar import AUTO_CROP_MAX, auto_crop_size

    assert auto_crop_size((10.0, 20.0, 210.4, 220.4)) == 200
    assert (
        auto_crop_size((0.0, 0.0, 30.0, 30.0)) == 64 and auto_crop_size((0, 0, 3000, 3000)) == AUTO_CROP_MAX
    )
    identity = Identity(
        np.zeros(50), [0.0, 0.0, 0.0], [0.0, -1.0, -110.0], 1000.0, (photo.shape[1], photo.shape[0])
    )  # a head far away: a small face in the photo
    built = build_portrait_avatar(
        photo, identity, np.zeros(NUM_EXPRESSIONS), head, PortraitAvatarConfig(crop_size=None)
    )
    side = built.crop_box[2] - built.crop_box[0]
    assert built.camera.width == built.camera.height == round(side) < AUTO_CROP_MAX
    assert built.background.shape[:2] == (round(side), round(side))

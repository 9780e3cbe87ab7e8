"""The mouth: an open-mouth photo closes in silence, a smile keeps its own teeth, ICT's teeth are lit."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.signal import find_peaks

from models.gaussian_avatar import PortraitAvatarConfig, build_portrait_avatar, crop_image, lip_gaps
from models.head_model import HeadModel
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS
from models.mesh_binding import triangle_frames
from models.mouth_interior import MouthPalette, mouth_interior
from models.mouth_rest import ease_from_photo, silent_expression
from models.portrait_build import bind_pixels, photo_mouth, skin_colour, triangle_labels
from renderers import Camera, Gaussians, rasterize

ROOT = Path(__file__).resolve().parents[1]
#: Talk's shipped portrait rendered with jawOpen 0.5 (benchmarks/results/mouth_inputs/README.md).
OPEN_MOUTH = ROOT / "benchmarks" / "results" / "mouth_inputs" / "shipped_open.png"
SIZE = 256
ZERO3 = torch.zeros(3)


@pytest.fixture(scope="module")
def head():
    return HeadModel()


def _avatar(photo, head):
    from pipelines.portrait import fit_portrait

    fit = fit_portrait(photo)
    return build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=SIZE)
    )


def _lightness(rgb):
    return cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2LAB)[..., 0]


def _mouth_of(avatar, head, photo):
    """What the photo shows between the avatar's fitted lips (models.portrait_build.PhotoMouth) and its crop."""
    crop = crop_image(photo, avatar.crop_box, SIZE)
    rest = avatar.rest_mesh()
    pixels = bind_pixels(head, rest, avatar.camera, crop, triangle_labels(head), 0.25, 0.15)
    return photo_mouth(head, rest, avatar.camera, crop, skin_colour(pixels)), crop


@pytest.fixture(scope="module")
def open_mouth(head):
    photo = np.asarray(Image.open(OPEN_MOUTH).convert("RGB"))
    return photo, _avatar(photo, head)


@pytest.fixture(scope="module")
def smiling(head):
    from skimage import data

    photo = data.astronaut()  # smiling, upper and lower teeth showing
    return photo, _avatar(photo, head)


def test_an_open_mouth_photo_closes_its_lips_at_neutral_motion(open_mouth, head):
    photo, avatar = open_mouth
    assert avatar.photo_mouth_open
    seen, crop = _mouth_of(avatar, head, photo)
    assert seen.opening.sum() > 100
    neutral = torch.zeros(NUM_EXPRESSIONS)
    # The fitted mesh's lips meet at neutral motion, and the interior is not drawn.
    closed_mesh = avatar.mesh(neutral[None], ZERO3[None], ZERO3[None])[0]
    assert float(lip_gaps(closed_mesh, head).max()) < avatar.lip_gap_cm
    assert float(lip_gaps(avatar.rest_mesh(), head).max()) > 0.5  # the photo's own mouth is open
    closed = avatar.render(neutral, ZERO3, ZERO3, backend="cpu")
    # Where the photo showed the dark mouth, the render shows lips: much lighter than the photo's cavity.
    dark = seen.opening & (_lightness(crop) < 0.5 * np.median(_lightness(crop)[seen.opening.shape[0] // 3 :]))
    assert dark.sum() > 50
    assert np.median(_lightness(closed)[dark]) > np.median(_lightness(crop)[dark]) + 10
    # The photo mode keeps the photo's mouth open, and the first eased frame is the photo's face.
    avatar.silent_mouth = "photo"
    try:
        kept = avatar.render(neutral, ZERO3, ZERO3, backend="cpu")
    finally:
        avatar.silent_mouth = "auto"
    assert np.median(_lightness(kept)[dark]) < np.median(_lightness(closed)[dark]) - 10
    eased = ease_from_photo(np.zeros((20, NUM_EXPRESSIONS), np.float32), avatar.photo_offset().numpy(), 25.0)
    first = avatar.render(torch.from_numpy(eased[0]), ZERO3, ZERO3, backend="cpu")
    np.testing.assert_allclose(first, kept, atol=1e-4)
    assert np.abs(eased[-1]).max() == 0.0  # eased fully into the silent rest


def test_a_smiling_photo_keeps_its_own_teeth_at_rest(smiling, head):
    photo, avatar = smiling
    assert not avatar.photo_mouth_open  # a smile is not an open mouth: silence keeps it
    seen, crop = _mouth_of(avatar, head, photo)
    skin_l = np.median(_lightness(crop)[avatar.moving_mask > 0])
    teeth = seen.opening & (_lightness(crop) > 0.9 * skin_l)
    assert teeth.sum() > 40
    rest = avatar.render(torch.zeros(NUM_EXPRESSIONS), ZERO3, ZERO3, backend="cpu")
    # The photo's white teeth are still there, not replaced by drawn ones or a dark band.
    assert np.abs(rest[teeth] - crop[teeth]).mean() < 0.06
    assert np.median(_lightness(rest)[teeth]) > 0.9 * skin_l
    # They are bound to ICT's teeth: upper ones to the upper row, lower ones to the jaw's.
    face = len(avatar.binding) - avatar.num_mouth
    triangles = avatar.binding.triangle[face:]
    for row in ("teeth_upper", "teeth_lower"):
        assert torch.isin(triangles, head.region_triangles(row)).sum() > 10


def test_drawn_teeth_are_brighter_than_lips_and_read_as_single_teeth(head):
    vertices = head.neutral
    palette = MouthPalette(exposure=1.0)
    mouth = mouth_interior(head, vertices, triangle_frames(vertices, head.triangles), palette, 12000)
    teeth = mouth.darkening == 0
    means, quats, scales = mouth.binding.pose(vertices, head.triangles)
    # A camera 40 cm in front of the mouth, looking at it (+z is the face's forward).
    world_to_camera = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    world_to_camera[1, 3], world_to_camera[2, 3] = -3.3, 40.0
    camera = Camera(
        fx=1000.0, fy=1000.0, cx=128.0, cy=128.0, width=256, height=256, world_to_camera=world_to_camera
    )
    n = int(teeth.sum())
    drawn = Gaussians.unchecked(
        means[teeth], quats[teeth], scales[teeth], torch.full((n,), 0.99), mouth.colors[teeth]
    )
    image = rasterize(drawn, camera, backend="cpu").rgb.numpy()
    # Along the upper row, a few millimetres above its edge: the gaps between teeth are intensity dips.
    row = round(128 + (3.5 - 3.3) * 1000 / (40 - 10.8))
    profile = image[row].mean(-1)
    dips, _ = find_peaks(-profile, prominence=0.05)
    assert len(dips) >= 6, profile.round(2)
    # The teeth facing the camera are ivory and brighter than lips (ICT neutral skin is about 0.6).
    front = profile[profile > 0.2]
    assert np.median(front) > 0.6
    lips = np.asarray([0.66, 0.38, 0.38])  # a typical lip colour
    assert np.median(image[row][profile > 0.2].mean(-1)) > lips.mean()
    # Ivory, not tinted by the skin: red, green and blue within 20% of each other.
    mean_rgb = image[row][profile > 0.2].mean(0)
    assert mean_rgb.min() > 0.8 * mean_rgb.max()


def test_silent_expression_modes():
    rest = torch.zeros(1, NUM_EXPRESSIONS)
    rest[0, EXPRESSION_INDEX["jawOpen"]] = 0.4
    rest[0, EXPRESSION_INDEX["mouthSmile_L"]] = 0.6
    assert torch.equal(silent_expression(rest, "auto", photo_mouth_open=False), rest)
    assert torch.equal(silent_expression(rest, "photo", photo_mouth_open=True), rest)
    closed = silent_expression(rest, "auto", photo_mouth_open=True)
    assert closed[0, EXPRESSION_INDEX["jawOpen"]] == 0 and closed[0, EXPRESSION_INDEX["mouthSmile_L"]] == 0.6
    assert torch.equal(silent_expression(rest, "closed", photo_mouth_open=False), closed)

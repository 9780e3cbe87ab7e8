"""Avatar3D: the 3D head matches the photo from the front, has no holes from any side, completes the
unseen head plausibly, moves with motion, round-trips through its files and standard .ply, and the CLI
writes every output (or fails cleanly)."""

import math
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from models.gaussian_avatar import crop_image, project_points
from models.head_avatar import (
    HeadAvatarConfig,
    build_head_avatar,
    colour_field,
    mirror_points,
    turntable_cameras,
)
from models.head_model import HeadModel
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS, Motion
from pipelines.avatar3d import (
    CM_PER_METRE,
    Avatar3DConfig,
    build_parser,
    load_head_avatar,
    main,
    save_head_avatar,
    to_metres,
)
from pipelines.config_cli import config_from_args
from pipelines.image_io import load_image
from pipelines.motion_io import save_motion
from pipelines.portrait import DEFAULT_PORTRAIT, fit_portrait
from pipelines.splat_io import write_ply
from renderers import Gaussians, rasterize
from renderers.gaussians import SH_C0
from renderers.mesh_raster import rasterize_mesh

FFPROBE = shutil.which("ffprobe")


@pytest.fixture(scope="module")
def head():
    return HeadModel()


@pytest.fixture(scope="module")
def photo():
    return load_image(DEFAULT_PORTRAIT)


@pytest.fixture(scope="module")
def avatar(head, photo):
    fit = fit_portrait(photo)
    cfg = HeadAvatarConfig(num_gaussians=60_000, photo_size=384)
    return build_head_avatar(photo, fit.to_identity(), fit.expression, head, cfg)


def _psnr(a, b):
    return 10 * np.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12))


def _face_mask(avatar, head):
    cam = avatar.photo_camera
    points = project_points(avatar.photo_mesh(), cam).numpy()
    frags = rasterize_mesh(points, head.triangles.numpy(), cam.width, cam.height)
    face = np.isin(frags.triangle, head.region_triangles("face").numpy()).astype(np.uint8)
    # Inside the face: two pixels in from its outline, where the photo may show hair or background.
    return cv2.erode(face, np.ones((5, 5), np.uint8)) > 0


def test_frontal_render_matches_the_portrait_inside_the_face(avatar, head, photo):
    from skimage.metrics import structural_similarity

    cam = avatar.photo_camera
    rendered = rasterize(avatar.photo_gaussians(), cam, backend="cpu").rgb.numpy()
    crop = crop_image(photo, avatar.crop_box, cam.width)
    face = _face_mask(avatar, head)
    assert face.sum() > 0.15 * cam.width * cam.height
    assert _psnr(rendered[face], crop[face]) >= 25.0
    ys, xs = np.nonzero(face)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    ssim = structural_similarity(rendered[box], crop[box], channel_axis=2, data_range=1.0)
    assert ssim >= 0.6
    # The photo is not simply reproduced everywhere: a render with the colours shuffled is far off.
    shuffled = avatar.photo_gaussians()
    shuffled.colors = shuffled.colors[
        torch.randperm(len(shuffled.colors), generator=torch.Generator().manual_seed(0))
    ]
    other = rasterize(shuffled, cam, backend="cpu").rgb.numpy()
    assert _psnr(other[face], crop[face]) < 18.0


def test_no_holes_inside_the_silhouette_from_any_side(avatar, head):
    gaussians = avatar.canonical_gaussians()
    mesh = head.shape(avatar.identity, torch.zeros(1, NUM_EXPRESSIONS))[0]
    size = 96
    worst = 1.0
    for pitch in (-30.0, 0.0, 30.0):
        for cam in turntable_cameras(avatar, 24, size=size, pitch=math.radians(pitch)):
            alpha = rasterize(gaussians, cam, backend="cpu").alpha.numpy()
            frags = rasterize_mesh(project_points(mesh, cam).numpy(), head.triangles.numpy(), size, size)
            # One pixel in from the silhouette: the outermost pixel centre may just graze the mesh.
            inside = cv2.erode((frags.triangle >= 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            assert inside.sum() > 0.1 * size * size
            worst = min(worst, float(alpha[inside].min()))
    assert worst >= 0.99, f"a hole: alpha {worst:.3f}"


def test_unseen_back_of_head_gets_the_hair_colour_and_the_neck_stays_skin(avatar, head):
    # The shipped portrait wears a dark navy cap; the back of the head must not be skin coloured.
    g = avatar.canonical_gaussians()
    back = (g.means[:, 2] < -6.0) & (g.means[:, 1] > 6.0)
    neck_front = (g.means[:, 2] > 2.0) & (g.means[:, 1] < -8.0) & (g.means[:, 1] > -11.0)
    cheeks = torch.isin(avatar.binding.triangle, head.region_triangles("face")) & (g.means[:, 2] > 6.0)
    assert back.sum() > 50 and neck_front.sum() > 50
    assert g.colors[back].mean() < 0.5 * g.colors[cheeks].mean()
    # Unseen surface is smooth: neighbouring back-of-head Gaussians differ little.
    back_colors = g.colors[back]
    assert float(back_colors.std(0).max()) < 0.1


def test_mirror_points_map_each_point_to_its_reflection(head):
    tris = torch.cat([head.region_triangles("face"), head.region_triangles("eyeball_left")])[::97]
    bary = torch.rand(len(tris), 3, generator=torch.Generator().manual_seed(1))
    bary = bary / bary.sum(1, keepdim=True)
    mtri, mbary, found = mirror_points(head, tris, bary)
    assert found.all()
    verts = head.neutral
    here = (bary[:, :, None] * verts[head.triangles[tris]]).sum(1)
    there = (mbary[:, :, None] * verts[head.triangles[mtri]]).sum(1)
    # Quads split the other way on the mirror side are not planar: a tenth of a millimetre is allowed.
    torch.testing.assert_close(there, here * torch.tensor([-1.0, 1.0, 1.0]), atol=0.02, rtol=0)
    # Mirroring twice comes back to the same point.
    back, back_bary, _ = mirror_points(head, mtri, mbary)
    again = (back_bary[:, :, None] * verts[head.triangles[back]]).sum(1)
    torch.testing.assert_close(again, here, atol=0.02, rtol=0)


def test_colour_field_keeps_observations_and_fades_to_the_prior_far_away():
    # A 1 cm-spaced strip of 40 x 2 vertices: red is seen at the left end only.
    xs = np.arange(40, dtype=np.float64)
    verts = np.concatenate(
        [np.stack([xs, np.zeros(40), np.zeros(40)], 1), np.stack([xs, np.ones(40), np.zeros(40)], 1)]
    )
    tris = np.concatenate([[[i, i + 1, 40 + i], [i + 1, 41 + i, 40 + i]] for i in range(39)])
    data = np.zeros((80, 3))
    weight = np.zeros(80)
    data[[0, 40]] = (1.0, 0.0, 0.0)
    weight[[0, 40]] = 100.0
    prior = np.tile([0.0, 0.0, 1.0], (80, 1))
    field = colour_field(verts, tris, data, weight, prior, prior_weight=0.1, smoothness=1.0)
    assert field[0, 0] > 0.9 and field[39, 2] > 0.95
    # Red fades out monotonically along the strip (no ringing at the seam).
    assert np.all(np.diff(field[:40, 0]) <= 1e-6)


def test_motion_opens_the_jaw_and_turns_the_head_about_the_pivot(avatar, head):
    zero3 = torch.zeros(3)
    rest = avatar.gaussians(torch.zeros(NUM_EXPRESSIONS), zero3, zero3)
    expr = torch.zeros(NUM_EXPRESSIONS)
    expr[EXPRESSION_INDEX["jawOpen"]] = 0.8
    opened = avatar.gaussians(expr, zero3, zero3)
    chin = (rest.means[:, 1] < -6.0) & (rest.means[:, 1] > -9.0) & (rest.means[:, 2] > 8.0)
    assert chin.sum() > 50
    assert float((opened.means[chin, 1] - rest.means[chin, 1]).mean()) < -0.5
    turn = torch.tensor([0.0, 0.5, 0.0])
    turned = avatar.gaussians(torch.zeros(NUM_EXPRESSIONS), turn, zero3)
    top = rest.means[:, 1] > 5.0  # well above the neck blend: moves rigidly with the head
    expected = head.pose(rest.means[None, top], turn[None], zero3[None])[0]
    torch.testing.assert_close(turned.means[top], expected, atol=1e-3, rtol=0)


def test_avatar_file_and_metric_ply_round_trip_into_the_same_image(avatar, head, tmp_path):
    path = save_head_avatar(avatar, tmp_path / "avatar.safetensors")
    again = load_head_avatar(path, head)
    a, b = avatar.canonical_gaussians(), again.canonical_gaussians()
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.colors, b.colors)

    # The .ply, parsed the way gsplat's examples read one (a fixed float32 record per Gaussian, logit
    # opacities, log scales), renders the same image as the avatar itself.
    sub = Gaussians(a.means[::25], a.quats[::25], a.scales[::25], a.opacities[::25], a.colors[::25])
    write_ply(tmp_path / "head.ply", to_metres(sub))
    raw = (tmp_path / "head.ply").read_bytes()
    header_end = raw.index(b"end_header\n") + len(b"end_header\n")
    names = [ln.split()[-1] for ln in raw[:header_end].decode().splitlines() if ln.startswith("property")]
    table = np.frombuffer(raw[header_end:], dtype=[(n, "<f4") for n in names])
    means = np.stack([table["x"], table["y"], table["z"]], 1) * CM_PER_METRE
    scales = np.exp(np.stack([table[f"scale_{i}"] for i in range(3)], 1)) * CM_PER_METRE
    quats = np.stack([table[f"rot_{i}"] for i in range(4)], 1)
    opacities = 1 / (1 + np.exp(-table["opacity"]))
    rgb = np.stack([table[f"f_dc_{i}"] for i in range(3)], 1) * SH_C0 + 0.5
    loaded = Gaussians(
        *(
            torch.from_numpy(np.ascontiguousarray(v, np.float32))
            for v in (means, quats, scales, opacities, rgb)
        )
    )
    cam = turntable_cameras(avatar, 3, size=40, yaw=0.4)[1]
    ours = rasterize(sub, cam, backend="cpu")
    reference = rasterize(loaded, cam, backend="reference")
    assert float(ours.alpha.mean()) > 0.05
    torch.testing.assert_close(reference.rgb, ours.rgb, atol=2e-3, rtol=0)

    # gsplat's own exporter writes the same properties for the same parameters.
    exporter = pytest.importorskip("gsplat.exporter")
    sh0 = torch.from_numpy(np.stack([table[f"f_dc_{i}"] for i in range(3)], 1))[:, None, :]
    blob = exporter.export_splats(
        torch.from_numpy(np.stack([table["x"], table["y"], table["z"]], 1)),
        torch.from_numpy(np.stack([table[f"scale_{i}"] for i in range(3)], 1)),
        torch.from_numpy(quats.astype(np.float32)),
        torch.from_numpy(table["opacity"].copy()),
        sh0,
        torch.zeros(len(table), 0, 3),
        format="ply",
    )
    g_end = blob.index(b"end_header\n") + len(b"end_header\n")
    g_names = [ln.split()[-1] for ln in blob[:g_end].decode().splitlines() if ln.startswith("property")]
    g_table = np.frombuffer(blob[g_end:], dtype=[(n, "<f4") for n in g_names])
    for name in ("x", "y", "z", "f_dc_0", "opacity", "scale_0", "rot_0", "rot_3"):
        np.testing.assert_allclose(g_table[name], table[name], atol=1e-6)


# ------------------------------------------------------------------------------------------------ CLI
def _run(args, capsys):
    code = main([*args, "--quiet"])
    return code, capsys.readouterr().err


def _frames(path):
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,width", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    width, frames = out.stdout.strip().split(",")
    return int(width), int(frames)


@pytest.mark.skipif(FFPROBE is None, reason="needs ffprobe (Debian package ffmpeg)")
def test_cli_writes_ply_splat_turntable_avatar_and_a_talking_video(tmp_path, capsys):
    motion = Motion.neutral(6, 10.0)
    motion.expression[:, EXPRESSION_INDEX["jawOpen"]] = np.linspace(0, 0.6, 6)
    save_motion(motion, tmp_path / "m.npz")
    out = tmp_path / "out"
    out.mkdir()
    args = [
        "-o",
        str(out),
        "--num-gaussians",
        "20000",
        "--size",
        "96",
        "--fps",
        "10",
        "--turntable-seconds",
        "0.5",
    ]
    code, err = _run([*args, "--motion", str(tmp_path / "m.npz")], capsys)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["avatar.safetensors", "head.ply", "head.splat", "talk3d.mp4", "turntable.mp4"]
    assert _frames(out / "turntable.mp4") == (96, 5)
    assert _frames(out / "talk3d.mp4") == (96, 6)
    from renderers import read_ply

    ply = read_ply(out / "head.ply")
    extent = (ply.means.max(0).values - ply.means.min(0).values).numpy()
    assert 0.15 < extent[1] < 0.6, "the .ply is in metres, y up: a head and neck is a few dozen cm tall"

    # Reusing the avatar skips the photo entirely and orbits the camera.
    again = tmp_path / "again"
    again.mkdir()
    code, err = _run(
        ["--avatar", str(out / "avatar.safetensors"), "--image", str(tmp_path / "missing.jpg"), "-o", str(again),
         "--size", "96", "--fps", "10", "--turntable-seconds", "0", "--motion", str(tmp_path / "m.npz"),
         "--camera", "orbit"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in again.iterdir()) == ["head.ply", "head.splat", "talk3d.mp4"]


def test_cli_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(blank)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    tiny = tmp_path / "tiny.png"
    Image.open(DEFAULT_PORTRAIT).convert("RGB").resize((60, 70)).save(tiny)
    bad_avatar = tmp_path / "bad.safetensors"
    bad_avatar.write_bytes(b"nonsense")
    cases = [
        (["--image", str(blank), "-o", str(out)], "no face"),
        (["--image", str(corrupt), "-o", str(out)], "corrupt"),
        (["--image", str(tiny), "-o", str(out)], "face"),
        (["--image", str(tmp_path / "nope.jpg"), "-o", str(out)], "not found"),
        (["-o", str(tmp_path / "missing")], "does not exist"),
        (["--avatar", str(bad_avatar), "-o", str(out)], "avatar"),
        (["--face-index", "3", "-o", str(out)], "face-index"),
    ]
    for args, words in cases:
        code, err = _run([*args, "--turntable-seconds", "0"], capsys)
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2, (args, err)
        assert len(lines) == 1 and words.split()[0] in lines[0].lower(), (args, err)
    assert list(out.iterdir()) == []


def test_flags_parse_to_the_config_defaults_and_the_background_is_no_flag():
    assert config_from_args(Avatar3DConfig, build_parser().parse_args([])) == Avatar3DConfig()
    args = ["-o", "out", "--camera", "orbit", "--num-gaussians", "20000", "--quiet", "--still"]
    cfg = config_from_args(Avatar3DConfig, build_parser().parse_args(args))
    assert cfg == Avatar3DConfig(
        output="out", camera="orbit", num_gaussians=20_000, progress=False, still=True
    )
    assert "--background" not in build_parser().format_help()


def test_the_splat_viewer_copy_faces_the_viewers_fixed_camera_upright_and_fills_its_height():
    # gsplat.js (gr.Model3D's splat viewer) looks at the origin from 5 units away at orbit angles
    # alpha = beta = 0.5 rad with OpenCV camera axes in a y-down world (camera-to-world Ry(-a) Rx(-b)).
    from pipelines.avatar3d import (
        SPLAT_VIEWER_FOCAL_PX,
        SPLAT_VIEWER_ORBIT,
        SPLAT_VIEWER_RADIUS,
        for_splat_viewer,
    )
    from renderers import Gaussians

    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=1)
    means = dirs * torch.tensor([0.08, 0.11, 0.095])  # a head-sized ellipsoid in metres, face towards +z
    n = len(means)
    head = Gaussians(means, torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.full((n, 3), 0.004),
                     torch.full((n,), 0.9), torch.rand(n, 3, generator=g))  # fmt: skip
    view = for_splat_viewer(head, height=500, fill=0.9, framed=1.0)
    a, b = SPLAT_VIEWER_ORBIT
    centre = SPLAT_VIEWER_RADIUS * torch.tensor(
        [math.sin(a) * math.cos(b), -math.sin(b), -math.cos(a) * math.cos(b)]
    )
    ry = torch.tensor([[math.cos(-a), 0, math.sin(-a)], [0, 1, 0], [-math.sin(-a), 0, math.cos(-a)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(-b), -math.sin(-b)], [0, math.sin(-b), math.cos(-b)]])
    cam = (view.means.double() - centre.double()) @ (ry @ rx).double()  # world -> camera (rows: points)
    px = SPLAT_VIEWER_FOCAL_PX * cam[:, :2] / cam[:, 2:]
    nose, top = means[:, 2].argmax(), means[:, 1].argmax()
    assert cam[nose, 2] == cam[:, 2].min()  # the face is what is nearest the camera
    assert px[nose].abs().max() < 20  # ... and in the middle of the view
    assert px[top, 1] < -150  # the top of the head is at the top of the screen (y down)
    assert 0.85 * 450 <= float(px[:, 1].max() - px[:, 1].min()) <= 1.05 * 450  # fills 90% of 500 px
    # Turning the quaternions with the centres: a Gaussian's axes turn as the head does.
    from models.transforms import quaternion_to_matrix

    turn = quaternion_to_matrix(view.quats[:1].double())[0]
    offset = view.means[nose].double() - view.means[top].double()
    assert torch.allclose(
        turn @ (means[nose] - means[top]).double() * (offset.norm() / (means[nose] - means[top]).norm()),
        offset,
        atol=1e-5,
    )

"""The CPU backend draws exactly what the dense reference draws; cameras, batching and bad input."""

import importlib
import math
import sys
import warnings

import numpy as np
import pytest
import torch

from renderers import Camera, Gaussians, composite_over, orbit_cameras, rasterize
from renderers.gaussians import SH_SIZES, sh_to_rgb
from renderers.rasterize import _project_reference

TOL = 1e-3


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The dense reference runs many tiny ops; extra threads only add overhead on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_scene(n, seed, sh_degree=None, spread=12.0, scale_range=(0.05, 3.0)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2 * spread
    quats = torch.randn(n, 4, generator=g) * 3.0  # deliberately not unit length
    lo, hi = scale_range
    scales = lo * torch.exp(torch.rand(n, 3, generator=g) * math.log(hi / lo))
    opacities = torch.rand(n, generator=g)
    opacities[: n // 5] = 1.0  # high opacity: alpha beyond 3 sigma still exceeds 1/255
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, SH_SIZES[sh_degree], 3, generator=g) * 0.6
    return Gaussians(means, quats, scales, opacities, colors)


def assert_same_render(a, b, tol=TOL):
    for name, x, y in zip(("rgb", "alpha", "depth"), a, b):
        assert x.shape == y.shape, name
        err = (x - y).abs().max().item() if x.numel() else 0.0
        assert err < tol, f"{name}: max abs error {err}"


def both(g, cam, **kw):
    return rasterize(g, cam, backend="cpu", **kw), rasterize(g, cam, backend="reference", **kw)


CAM = Camera.look_at((3.0, 2.0, 40.0), (0.0, 0.0, 0.0), width=72, height=56, fov_y=math.radians(40))


@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
def test_cpu_backend_matches_dense_reference_on_random_overlapping_scenes(sh_degree):
    g = random_scene(150, seed=sh_degree or 7, sh_degree=sh_degree)
    cpu, ref = both(g, CAM, background=(0.2, 0.4, 0.6))
    assert ref.alpha.max() > 0.9 and (ref.alpha > 0.01).float().mean() > 0.3  # a busy, overlapping image
    assert_same_render(cpu, ref)


def test_coincident_gaussians_composite_in_index_order_like_the_reference():
    g = random_scene(40, seed=3)
    twin = Gaussians(g.means, g.quats, g.scales, g.opacities, 1.0 - g.colors)  # same places, other colours
    scene = Gaussians.cat([g, twin, g[:10]])
    cpu, ref = both(scene, CAM)
    assert_same_render(cpu, ref)
    # Ties in depth keep index order: the first copy is in front, so swapping the halves changes the image.
    swapped = rasterize(Gaussians.cat([twin, g, g[:10]]), CAM, backend="cpu")
    assert (swapped.rgb - cpu.rgb).abs().max() > 0.05


def test_gaussians_behind_camera_or_straddling_the_near_plane():
    cam = Camera.look_at((0.0, 0.0, 10.0), width=64, height=48, near=1.0)
    n = 60
    g = torch.Generator().manual_seed(11)
    z = torch.linspace(20.0, 5.0, n)  # camera space depth from -10 (behind) to +5 ...
    means = torch.stack(
        [(torch.rand(n, generator=g) - 0.5) * 8, (torch.rand(n, generator=g) - 0.5) * 8, z], 1
    )
    scales = torch.full((n, 3), 2.0)  # large: many straddle the near plane at depth 1 cm
    g_ = Gaussians(
        means, torch.randn(n, 4, generator=g), scales, torch.rand(n, generator=g), torch.rand(n, 3)
    )
    depth = 10.0 - means[:, 2]
    assert (depth < 0).any() and ((depth > 1.0) & (depth < 3.0)).any()
    cpu, ref = both(g_, cam)
    assert ref.alpha.max() > 0.9
    assert_same_render(cpu, ref)
    # Centres behind the camera or before the near plane draw nothing at all.
    hidden = g_[depth < 1.0]
    assert rasterize(hidden, cam, backend="cpu").alpha.max() == 0


def test_sub_pixel_and_screen_filling_gaussians():
    tiny = random_scene(80, seed=5, spread=8.0, scale_range=(1e-4, 1e-2))  # far below a pixel
    huge = random_scene(3, seed=6, spread=1.0, scale_range=(30.0, 60.0))  # covers the whole view
    huge.opacities[:] = torch.tensor([0.3, 0.6, 1.0])
    scene = Gaussians.cat([tiny, huge])
    cpu, ref = both(scene, CAM)
    assert (ref.alpha > 0.2).float().mean() > 0.99
    assert_same_render(cpu, ref)
    cpu, ref = both(tiny, CAM)
    assert ref.alpha.max() > 0.3  # the 0.3 px low-pass keeps sub-pixel Gaussians visible
    assert_same_render(cpu, ref)


def test_empty_scene_renders_background():
    empty = random_scene(5, seed=1)[torch.zeros(5, dtype=torch.bool)]
    assert len(empty) == 0
    for backend in ("cpu", "reference"):
        out = rasterize(empty, CAM, background=(0.1, 0.2, 0.3), backend=backend)
        assert out.rgb.shape == (56, 72, 3) and out.alpha.shape == (56, 72) and out.depth.shape == (56, 72)
        assert torch.allclose(out.rgb, torch.tensor([0.1, 0.2, 0.3]).expand(56, 72, 3))
        assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0


def test_image_sizes_that_are_not_tile_multiples_and_opaque_pixels_stop_early():
    g = random_scene(300, seed=9, spread=4.0)
    g.opacities[:] = 1.0
    cam = Camera.look_at((0.0, 0.0, 15.0), width=37, height=21)
    cpu, ref = both(g, cam)
    # Opaque pixels: transmittance stops above 1e-4 (the Gaussian that would cross it is left out).
    assert (ref.alpha > 0.998).float().mean() > 0.5 and ref.alpha.max() <= 1 - 1e-4
    assert_same_render(cpu, ref)


def test_depth_is_the_alpha_weighted_expected_depth():
    # Two flat, large, semi-transparent layers at depths 30 and 40 cm: at the centre pixel the first has
    # weight 0.5 and the second 0.5 * 0.5 = 0.25, so the expected depth is (0.5*30 + 0.25*40) / 0.75.
    means = torch.tensor([[0.0, 0.0, 10.0], [0.0, 0.0, 0.0]])
    flat = torch.tensor([[100.0, 100.0, 0.0]] * 2)
    g = Gaussians(means, torch.tensor([[1.0, 0, 0, 0]] * 2), flat, torch.tensor([0.5, 0.5]), torch.ones(2, 3))
    cam = Camera.look_at((0.0, 0.0, 40.0), width=16, height=16)
    for backend in ("cpu", "reference"):
        out = rasterize(g, cam, backend=backend)
        assert out.alpha[8, 8].item() == pytest.approx(0.75, abs=1e-4)
        assert out.depth[8, 8].item() == pytest.approx((0.5 * 30 + 0.25 * 40) / 0.75, abs=1e-3)


def test_projection_matches_gsplats_torch_implementation():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    g = random_scene(300, seed=21, spread=20.0)
    cam = Camera.look_at((5.0, -3.0, 35.0), (1.0, 1.0, 0.0), width=96, height=64)
    ours = _project_reference(g, cam)
    covars, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g.means, covars, cam.world_to_camera[None], cam.K[None], cam.width, cam.height, near_plane=cam.near
    )
    theirs_visible = (radii[0] > 0).all(-1)
    # gsplat's torch twin uses a fixed 3.33-sigma box; ours is opacity aware, so ours is a subset.
    assert (ours.visible & ~theirs_visible).sum() == 0
    assert ours.visible.sum() > 100
    v = ours.visible
    torch.testing.assert_close(ours.means2d[v], means2d[0][v], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.depths[v], depths[0][v], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ours.conics[v], conics[0][v], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_colours_match_gsplat(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(500, SH_SIZES[degree], 3, generator=g)
    dirs = torch.randn(500, 3, generator=g)
    expected = torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)
    torch.testing.assert_close(sh_to_rgb(coeffs, dirs), expected, rtol=1e-5, atol=1e-5)


def face_markers():
    """Head-model convention (cm, y up, face along +z): red above, blue below, green on +x (its left)."""
    means = torch.tensor([[0.0, 5.0, 8.0], [0.0, -5.0, 8.0], [5.0, 0.0, 8.0]])
    colors = torch.eye(3)  # red, green, blue rows
    colors = colors[[0, 2, 1]]  # top red, bottom blue, left green
    return Gaussians(
        means, torch.tensor([[1.0, 0, 0, 0]] * 3), torch.full((3, 3), 0.8), torch.ones(3), colors
    )


def blob_centre(rgb, channel):
    weight = rgb[..., channel] * (rgb[..., channel] > 0.5)
    rows, cols = torch.meshgrid(torch.arange(rgb.shape[0]), torch.arange(rgb.shape[1]), indexing="ij")
    return (weight * rows).sum() / weight.sum(), (weight * cols).sum() / weight.sum()


def test_look_at_from_plus_z_sees_an_upright_face():
    cam = Camera.look_at((0.0, 0.0, 55.0), width=64, height=64)
    out = rasterize(face_markers(), cam, backend="cpu")
    red_row, red_col = blob_centre(out.rgb, 0)
    blue_row, blue_col = blob_centre(out.rgb, 2)
    green_row, green_col = blob_centre(out.rgb, 1)
    assert red_row < 32 < blue_row  # +y (forehead) is image up
    assert abs(red_col - 32) < 1 and abs(blue_col - 32) < 1
    assert green_col > 32 + 5 and abs(green_row - 32) < 1  # +x is image right
    assert torch.allclose(cam.position, torch.tensor([0.0, 0.0, 55.0]))
    assert out.depth[int(red_row), int(red_col)] == pytest.approx(47.0, abs=0.2)


def test_orbit_turns_about_y_and_pitch_looks_down():
    cams = orbit_cameras(4, distance=50.0, width=64, height=64)
    assert len(cams) == 4
    positions = torch.stack([c.position for c in cams])
    torch.testing.assert_close(
        positions, torch.tensor([[0, 0, 50.0], [50.0, 0, 0], [0, 0, -50.0], [-50.0, 0, 0]]), atol=1e-4, rtol=0
    )
    # At yaw 90 degrees the camera sits on +x and sees the profile: the face (+z) points to image left,
    # and the green marker on the +x cheek is nearer than the red one on the midline.
    side = rasterize(face_markers(), cams[1], backend="cpu")
    green_row, green_col = blob_centre(side.rgb, 1)
    red_row, red_col = blob_centre(side.rgb, 0)
    assert green_col < 32 - 5 and abs(green_row - 32) < 1 and red_row < 32
    assert side.depth[int(green_row), int(green_col)] < side.depth[int(red_row), int(red_col)] - 3
    above = orbit_cameras(1, distance=50.0, pitch=math.radians(30))[0]
    assert above.position[1] == pytest.approx(25.0, abs=1e-4)
    with pytest.raises(ValueError, match="pitch"):
        orbit_cameras(3, pitch=math.radians(90))


def test_from_focal_and_resized_cameras():
    cam = Camera.from_focal(600.0, 512, 384)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (600.0, 600.0, 256.0, 192.0)
    assert torch.equal(cam.world_to_camera, torch.eye(4))
    half = cam.resized(256, 192)
    assert (half.fx, half.cx, half.width, half.height) == (300.0, 128.0, 256, 192)
    g = random_scene(50, seed=2)
    cam = Camera.look_at((0.0, 0.0, 40.0), width=64, height=48)
    a = rasterize(g, cam, 32, 24, backend="cpu")
    b = rasterize(g, cam.resized(32, 24), backend="cpu")
    assert a.rgb.shape == (24, 32, 3)
    assert torch.equal(a.rgb, b.rgb)


def test_a_list_of_cameras_renders_a_batch():
    g = random_scene(100, seed=4, sh_degree=2)
    cams = orbit_cameras(3, distance=40.0, width=40, height=32)
    batch = rasterize(g, cams, backend="cpu")
    assert batch.rgb.shape == (3, 32, 40, 3) and batch.alpha.shape == (3, 32, 40)
    for i, cam in enumerate(cams):
        one = rasterize(g, cam, backend="cpu")
        assert torch.equal(batch.rgb[i], one.rgb) and torch.equal(batch.depth[i], one.depth)
    assert (batch.rgb[0] - batch.rgb[1]).abs().max() > 0.1  # view-dependent SH and a different pose
    assert_same_render(batch, rasterize(g, cams, backend="reference"))


def test_background_equals_composite_over_black_render():
    g = random_scene(100, seed=8)
    black = rasterize(g, CAM, backend="cpu")
    grey = rasterize(g, CAM, background=(0.5, 0.5, 0.5), backend="cpu")
    torch.testing.assert_close(composite_over(black.rgb, black.alpha, (0.5, 0.5, 0.5)), grey.rgb)
    assert (grey.rgb - black.rgb).abs().max() > 0.4


def test_unnormalised_quaternions_and_zero_scales_have_defined_results():
    g = random_scene(60, seed=12)
    unit = Gaussians(g.means, g.quats / g.quats.norm(dim=1, keepdim=True), g.scales, g.opacities, g.colors)
    scaled = Gaussians(g.means, g.quats * 7.5, g.scales, g.opacities, g.colors)
    torch.testing.assert_close(scaled.quats, unit.quats)
    assert_same_render(rasterize(scaled, CAM, backend="cpu"), rasterize(unit, CAM, backend="cpu"))
    flat = Gaussians(g.means, g.quats, g.scales * torch.tensor([1.0, 1.0, 0.0]), g.opacities, g.colors)
    points = Gaussians(g.means, g.quats, torch.zeros_like(g.scales), g.opacities, g.colors)
    for scene in (flat, points):
        cpu, ref = both(scene, CAM)
        assert ref.alpha.max() > 0.1  # drawn (points as 0.3 px low-pass dots), not dropped
        assert_same_render(cpu, ref)


def bad(**override):
    n = 4
    fields = dict(
        means=torch.zeros(n, 3), quats=torch.tensor([[1.0, 0, 0, 0]] * n), scales=torch.ones(n, 3),
        opacities=torch.full((n,), 0.5), colors=torch.rand(n, 3),
    )  # fmt: skip
    fields.update(override)
    return fields


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            dict(means=torch.tensor([[0.0, 0, 0], [float("nan"), 0, 0], [0, 0, 0], [0, 0, 0]])),
            "means has NaN/inf",
        ),
        (dict(colors=torch.full((4, 3), float("inf"))), "colors has NaN/inf"),
        (dict(scales=-torch.ones(4, 3)), "scales must be >= 0"),
        (dict(opacities=torch.full((4,), 2.0)), r"opacities must lie in \[0, 1\]"),
        (dict(quats=torch.zeros(4, 4)), "all-zero quaternions"),
        (dict(opacities=torch.full((3,), 0.5)), "opacities must have shape"),
        (dict(means=torch.zeros(4, 2)), "means must have shape"),
        (dict(colors=torch.rand(4, 5, 3)), "K in"),
        (dict(colors=torch.rand(3, 3)), "colors must be"),
        (dict(means=np.zeros((4, 3))), "must be a torch.Tensor"),
    ],
)
def test_bad_gaussians_raise_a_clear_value_error(override, message):
    with pytest.raises(ValueError, match=message):
        Gaussians(**bad(**override))


def test_bad_cameras_and_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="rigid"):
        Camera(100, 100, 32, 32, 64, 64, torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    with pytest.raises(ValueError, match="NaN"):
        Camera(100, 100, 32, 32, 64, 64, torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="focal"):
        Camera(0, 100, 32, 32, 64, 64, torch.eye(4))
    with pytest.raises(ValueError, match="near < far"):
        Camera(100, 100, 32, 32, 64, 64, torch.eye(4), near=5.0, far=1.0)
    with pytest.raises(ValueError, match="parallel"):
        Camera.look_at((0.0, 10.0, 0.0))
    g = Gaussians(**bad())
    with pytest.raises(ValueError, match="backend"):
        rasterize(g, CAM, backend="vulkan")
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(g, CAM, backend="gsplat")
    with pytest.raises(ValueError, match="same image size"):
        rasterize(g, [CAM, CAM.resized(10, 10)], backend="cpu")
    with pytest.raises(ValueError, match="background"):
        rasterize(g, CAM, background=(1.0, 0.0), backend="cpu")
    with pytest.raises(ValueError, match="Camera"):
        rasterize(g, [], backend="cpu")


def test_gaussians_indexing_concatenation_and_device_moves():
    a = random_scene(10, seed=1)
    b = random_scene(5, seed=2, sh_degree=1)
    assert len(a[2:7]) == 5 and len(a[3]) == 1 and len(a[torch.tensor([0, 0, 1])]) == 3
    mixed = Gaussians.cat([a, b])
    assert len(mixed) == 15 and mixed.sh_degree == 1
    # RGB parts become SH DC with zero higher bands, which renders the same colour from any view.
    out_mixed = rasterize(mixed[:10], CAM, backend="cpu")
    assert_same_render(out_mixed, rasterize(a, CAM, backend="cpu"), tol=1e-5)
    moved = a.to("cpu")
    assert moved.means.dtype == torch.float32 and torch.equal(moved.means, a.means)
    assert Gaussians(a.means.double(), a.quats, a.scales, a.opacities, a.colors).means.dtype == torch.float32


def test_auto_backend_uses_the_cpu_backend_for_cpu_tensors():
    g = random_scene(30, seed=13)
    assert torch.equal(rasterize(g, CAM).rgb, rasterize(g, CAM, backend="cpu").rgb)


def test_shared_float32_exp_is_accurate_and_identical_in_numba_and_torch():
    from numba import njit

    from renderers._conventions import EXP_S_MAX
    from renderers._cpu import exp_neg
    from renderers.rasterize import _exp_neg_torch

    @njit
    def many(s):
        out = np.empty_like(s)
        for i in range(s.shape[0]):
            out[i] = exp_neg(s[i])
        return out

    grid = np.linspace(0, EXP_S_MAX, 200_001, dtype=np.float32)
    s = np.concatenate([grid, np.float32([0.0, 1e-8, EXP_S_MAX])])
    fast = many(s)
    np.testing.assert_array_equal(fast, _exp_neg_torch(torch.from_numpy(s)).numpy())
    exact = np.exp(-s.astype(np.float64))
    assert np.max(np.abs(fast / exact - 1)) < 3e-6


def test_cpu_backend_is_safe_to_call_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor

    g = random_scene(200, seed=14)
    expected = rasterize(g, CAM, backend="cpu").rgb
    with ThreadPoolExecutor(max_workers=3) as pool:
        outs = list(pool.map(lambda _: rasterize(g, CAM, backend="cpu").rgb, range(6)))
    assert all(torch.equal(o, expected) for o in outs)


def test_unchecked_gaussians_render_like_checked_ones():
    gen = torch.Generator().manual_seed(7)
    means = torch.randn(50, 3, generator=gen) * 3
    quats = torch.nn.functional.normalize(torch.randn(50, 4, generator=gen), dim=-1)
    scales, opacities, colors = (
        torch.rand(50, 3, generator=gen),
        torch.rand(50, generator=gen),
        torch.rand(50, 3, generator=gen),
    )
    cam = Camera.look_at((0.0, 0.0, 30.0), width=32, height=32)
    a = rasterize(Gaussians(means, quats, scales, opacities, colors), cam, backend="cpu")
    b = rasterize(Gaussians.unchecked(means, quats, scales, opacities, colors), cam, backend="cpu")
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha)


def test_screen_space_low_pass_is_a_parameter_every_backend_takes_alike():
    g = random_scene(150, seed=11, scale_range=(0.01, 0.3))  # mostly sub-pixel: eps2d sets their size
    sharp_cpu, sharp_ref = both(g, CAM, eps2d=0.05)
    assert_same_render(sharp_cpu, sharp_ref)
    soft = rasterize(g, CAM, backend="cpu")  # gsplat's default, 0.3
    # A smaller low-pass draws small Gaussians smaller: less total coverage.
    assert sharp_cpu.alpha.sum() < 0.8 * soft.alpha.sum()
    with pytest.raises(ValueError, match="eps2d"):
        rasterize(g, CAM, backend="cpu", eps2d=-1.0)


@pytest.fixture
def broken_gsplat(tmp_path, monkeypatch):
    """A gsplat whose import fails the way a mismatched CUDA build does, for this test only."""
    rasterize_module = importlib.import_module("renderers.rasterize")  # the module, not the function
    package = tmp_path / "gsplat"
    package.mkdir()
    (package / "__init__.py").write_text("raise OSError('libcudart.so.12: cannot open shared object file')\n")
    for name in [m for m in sys.modules if m == "gsplat" or m.startswith("gsplat.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    rasterize_module._gsplat_import_error.cache_clear()
    rasterize_module._warn_cpu_fallback.cache_clear()
    yield rasterize_module
    rasterize_module._gsplat_import_error.cache_clear()
    rasterize_module._warn_cpu_fallback.cache_clear()


def test_a_broken_gsplat_falls_back_loudly_once_and_refuses_an_explicit_request(broken_gsplat):
    g = random_scene(10, seed=15)
    with pytest.raises(ValueError, match="gsplat is installed but fails to import .*libcudart"):
        rasterize(g, CAM, backend="gsplat")
    # "auto" with CUDA Gaussians falls back to the CPU with one warning naming the error, then quietly.
    with pytest.warns(RuntimeWarning, match="OSError: libcudart.so.12.*on the CPU") as caught:
        assert broken_gsplat._auto_backend(torch.device("cuda")) == "cpu"
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert broken_gsplat._auto_backend(torch.device("cuda")) == "cpu"
        assert broken_gsplat._auto_backend(torch.device("cpu")) == "cpu"


def test_t_stop_ends_a_pixel_once_it_is_covered_enough_on_both_backends():
    g = random_scene(150, seed=11)
    full = rasterize(g, CAM, backend="reference")
    cpu, ref = both(g, CAM, t_stop=0.3)
    assert_same_render(cpu, ref)
    # A pixel stops taking Gaussians once 70% covered: what it shows differs from the full render only by
    # what lay behind, and its coverage is at least 70% wherever the full render's was.
    covered = full.alpha >= 0.7
    assert covered.float().mean() > 0.1
    assert (ref.alpha[covered] >= 0.7 - 1e-6).all()
    assert not torch.equal(ref.rgb, full.rgb), "some pixels stopped early"
    assert (ref.rgb - full.rgb).abs().max() < 0.35
    with pytest.raises(ValueError, match="t_stop"):
        rasterize(g, CAM, backend="cpu", t_stop=1.5)

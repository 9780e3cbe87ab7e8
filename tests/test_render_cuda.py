"""gsplat on CUDA and the numba CPU backend draw the same images (needs a CUDA GPU and gsplat).

gsplat JIT-compiles its CUDA extension on first use, which takes minutes once per machine.
"""

import math

import pytest
import torch

from renderers import Camera, Gaussians, orbit_cameras, rasterize

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def head_scene(n, seed, sh_degree=None):
    """Small flat Gaussians over a head-sized ellipsoid (cm), like the avatars draw."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.tensor([8.0, 11.0, 9.5])
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) * axes
    quats = torch.randn(n, 4, generator=g)
    spacing = math.sqrt(1100.0 / n)
    scales = spacing * (0.3 + torch.rand(n, 3, generator=g)) * torch.tensor([1.0, 1.0, 0.2])
    opacities = 0.3 + 0.7 * torch.rand(n, generator=g)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.4
    return Gaussians(means, quats, scales, opacities, colors)


def assert_close_images(gpu, cpu):
    rgb_err = (gpu.rgb.cpu() - cpu.rgb).abs()
    alpha_err = (gpu.alpha.cpu() - cpu.alpha).abs()
    # gsplat projects in float32 with fast CUDA exp, so a few pixels may flip a 1/255 or 1e-4 decision;
    # nearly all pixels must agree to 1e-3 and the images on average far closer.
    for name, err in (("rgb", rgb_err), ("alpha", alpha_err)):
        assert err.mean() < 1e-4, f"{name}: mean abs error {err.mean():.2e}"
        assert (err > 1e-3).float().mean() < 1e-3, f"{name}: {(err > 1e-3).float().mean():.2%} pixels off"
        assert err.max() < 0.05, f"{name}: max abs error {err.max():.3f}"
    covered = cpu.alpha > 0.05  # expected depth is a ratio, only meaningful where something is drawn
    depth_err = (gpu.depth.cpu() - cpu.depth).abs()[covered]
    assert covered.float().mean() > 0.1
    assert depth_err.mean() < 1e-3 and (depth_err > 1e-2).float().mean() < 1e-3


@pytest.mark.parametrize("sh_degree", [None, 3])
def test_gsplat_backend_matches_cpu_backend_on_a_head(sh_degree):
    pytest.importorskip("gsplat")
    scene = head_scene(20_000, seed=1, sh_degree=sh_degree)
    cams = orbit_cameras(3, distance=50.0, pitch=math.radians(10), width=256, height=192)
    cpu = rasterize(scene, cams, background=(0.1, 0.2, 0.3), backend="cpu")
    gpu = rasterize(scene.to("cuda"), cams, background=(0.1, 0.2, 0.3), backend="gsplat")
    assert gpu.rgb.is_cuda and gpu.rgb.shape == cpu.rgb.shape == (3, 192, 256, 3)
    assert_close_images(gpu, cpu)
    auto = rasterize(scene.to("cuda"), cams, background=(0.1, 0.2, 0.3))  # auto picks gsplat on CUDA
    assert torch.equal(auto.rgb, gpu.rgb)


def test_gsplat_backend_matches_cpu_backend_near_the_camera_and_for_empty_scenes():
    pytest.importorskip("gsplat")
    scene = head_scene(5_000, seed=2)
    cam = Camera.look_at((0.0, 0.0, 14.0), width=200, height=200, fov_y=math.radians(60))
    gpu = rasterize(scene.to("cuda"), cam, backend="gsplat")
    assert_close_images(gpu, rasterize(scene, cam, backend="cpu"))
    empty = scene[torch.zeros(len(scene), dtype=torch.bool)].to("cuda")
    out = rasterize(empty, cam, background=(1.0, 0.0, 0.0), backend="gsplat")
    assert torch.equal(out.rgb.cpu(), torch.tensor([1.0, 0.0, 0.0]).expand(200, 200, 3))
    assert out.alpha.abs().max() == 0

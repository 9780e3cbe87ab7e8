""".ply and .splat files: INRIA 3DGS layout, exact round trips, gsplat's exporter, bad files."""

import math
import os

import numpy as np
import pytest
import torch

from models.errors import HeadsplatError
from pipelines.splat_io import read_ply, write_ply, write_splat
from renderers import Camera, Gaussians, rasterize
from renderers.gaussians import SH_C0, SH_SIZES, rgb_to_sh_dc


def scene(n, seed, sh_degree=None):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 16
    quats = torch.randn(n, 4, generator=g)
    scales = 0.05 * torch.exp(torch.rand(n, 3, generator=g) * math.log(40.0))
    opacities = torch.rand(n, generator=g)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, SH_SIZES[sh_degree], 3, generator=g) * 0.5
    return Gaussians(means, quats, scales, opacities, colors)


CAM = Camera.look_at((2.0, 1.0, 35.0), width=64, height=48)


def header_of(path):
    blob = open(path, "rb").read()
    return blob[: blob.index(b"end_header\n") + len(b"end_header\n")].decode().splitlines(), blob


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_ply_round_trip_is_exact(tmp_path, sh_degree):
    g = scene(200, seed=sh_degree, sh_degree=sh_degree)
    g.opacities[:3] = torch.tensor([0.0, 1.0, 0.5])
    g.scales[3] = torch.tensor([0.0, 1.0, 2.0])  # a flat Gaussian
    path = tmp_path / "head.ply"
    write_ply(path, g)
    back = read_ply(path)
    # Stored as is: bit-exact.
    assert torch.equal(back.means, g.means)
    assert torch.equal(back.quats, g.quats)
    assert torch.equal(back.colors, g.colors)
    # Stored as logit / log (the INRIA layout): exact to float32 rounding of that transform.
    torch.testing.assert_close(back.opacities, g.opacities, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(back.scales, g.scales, rtol=2e-6, atol=1e-12)
    assert back.opacities[0] < 1e-12 and back.opacities[1] == 1.0 and back.scales[3, 0] < 1e-20
    # And a second round trip reproduces the first file's numbers.
    write_ply(tmp_path / "again.ply", back)
    again = read_ply(tmp_path / "again.ply")
    for a, b in zip(again._tensors(), back._tensors()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-12)
    ref = rasterize(g, CAM, backend="cpu")
    out = rasterize(back, CAM, backend="cpu")
    assert ref.alpha.max() > 0.5
    for x, y in zip(out, ref):
        assert (x - y).abs().max() < 1e-3


def test_ply_uses_the_inria_layout(tmp_path):
    g = scene(7, seed=1, sh_degree=1)
    path = tmp_path / "layout.ply"
    write_ply(path, g)
    lines, blob = header_of(path)
    props = [ln.split()[2] for ln in lines if ln.startswith("property")]
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 7"]
    assert all(ln.startswith("property float ") for ln in lines if ln.startswith("property"))
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    expected += ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert props == expected
    body = np.frombuffer(blob[len("\n".join(lines)) + 1 :], dtype="<f4").reshape(7, len(expected))
    np.testing.assert_array_equal(body[:, 0:3], g.means.numpy())
    # f_rest is channel-major: the 3 red coefficients of band 1, then green, then blue.
    np.testing.assert_array_equal(body[:, 9:12], g.colors[:, 1:, 0].numpy())
    np.testing.assert_array_equal(body[:, 12:15], g.colors[:, 1:, 1].numpy())
    np.testing.assert_allclose(body[:, 18], torch.logit(g.opacities.double()).numpy(), rtol=1e-6)
    np.testing.assert_allclose(body[:, 19:22], g.scales.log().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(body[:, 22:26], g.quats.numpy())


def test_rgb_colours_are_written_as_sh_dc(tmp_path):
    g = scene(50, seed=2)
    write_ply(tmp_path / "rgb.ply", g)
    back = read_ply(tmp_path / "rgb.ply")
    assert back.colors.shape == (50, 1, 3)
    torch.testing.assert_close(back.colors[:, 0], rgb_to_sh_dc(g.colors))
    torch.testing.assert_close(SH_C0 * back.colors[:, 0] + 0.5, g.colors)


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_a_ply_from_gsplats_exporter_loads_and_renders_like_our_copy(tmp_path, sh_degree):
    from gsplat.exporter import export_splats

    g = scene(150, seed=10 + sh_degree, sh_degree=sh_degree)
    theirs = tmp_path / "gsplat.ply"
    export_splats(
        means=g.means,
        scales=g.scales.log(),
        quats=g.quats,
        opacities=torch.logit(g.opacities),
        sh0=g.colors[:, :1],
        shN=g.colors[:, 1:],
        format="ply",
        save_to=str(theirs),
    )
    ours = tmp_path / "ours.ply"
    write_ply(ours, g)
    a, b = read_ply(theirs), read_ply(ours)
    assert len(a) == len(b) == 150 and a.sh_degree == sh_degree
    for x, y in zip(a._tensors(), b._tensors()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    ra, rb = rasterize(a, CAM, backend="cpu"), rasterize(b, CAM, backend="cpu")
    assert rb.alpha.max() > 0.5
    for x, y in zip(ra, rb):
        assert (x - y).abs().max() < 1e-3


def test_splat_export_is_32_bytes_per_splat_in_the_web_viewer_layout(tmp_path):
    g = scene(40, seed=4, sh_degree=1)
    path = tmp_path / "head.splat"
    write_splat(path, g)
    layout = [("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)]
    data = np.fromfile(path, dtype=layout)
    assert os.path.getsize(path) == 32 * 40 and len(data) == 40
    importance = (g.scales.prod(1) * g.opacities).numpy()
    order = np.argsort(-importance, kind="stable")
    np.testing.assert_array_equal(data["pos"], g.means.numpy()[order])
    np.testing.assert_array_equal(data["scale"], g.scales.numpy()[order])
    rgb = (SH_C0 * g.colors[:, 0] + 0.5).clamp(0, 1).numpy()[order]
    assert np.abs(data["rgba"][:, :3] / 255.0 - rgb).max() <= 0.5 / 255 + 1e-6
    assert np.abs(data["rgba"][:, 3] / 255.0 - g.opacities.numpy()[order]).max() <= 0.5 / 255 + 1e-6
    rot = (data["rot"].astype(np.float64) - 128) / 128
    assert np.abs(rot - g.quats.numpy()[order]).max() <= 0.5 / 128 + 1e-6


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    path = tmp_path / "out.ply"
    path.write_bytes(b"old")
    write_ply(path, scene(5, seed=3))
    write_splat(tmp_path / "out.splat", scene(5, seed=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ply", "out.splat"]
    assert len(read_ply(path)) == 5
    with pytest.raises(HeadsplatError, match="output folder does not exist"):
        write_ply(tmp_path / "missing_dir" / "x.ply", scene(5, seed=3))


def test_empty_gaussians_round_trip(tmp_path):
    empty = scene(3, seed=1)[torch.zeros(3, dtype=torch.bool)]
    write_ply(tmp_path / "empty.ply", empty)
    assert len(read_ply(tmp_path / "empty.ply")) == 0


def write_raw_ply(path, props, rows, fmt="binary_little_endian"):
    header = f"ply\nformat {fmt} 1.0\nelement vertex {len(rows)}\n"
    header += "".join(f"property float {p}\n" for p in props) + "end_header\n"
    path.write_bytes(header.encode() + np.asarray(rows, dtype="<f4").tobytes())


def test_bad_ply_files_raise_clear_value_errors(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply at all")
    with pytest.raises(ValueError, match="not a .ply"):
        read_ply(bad)
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="only binary"):
        read_ply(bad)
    write_raw_ply(bad, ["x", "y", "z"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="missing properties"):
        read_ply(bad)
    props = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    props += ["rot_0", "rot_1", "rot_2", "rot_3"]
    write_raw_ply(bad, props, [[float("nan")] + [0.0] * 9 + [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="NaN"):
        read_ply(bad)
    write_raw_ply(bad, props + ["f_rest_0", "f_rest_1"], [[0.0] * 10 + [1, 0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="f_rest"):
        read_ply(bad)
    write_ply(bad, scene(10, seed=1))
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated"):
        read_ply(bad)


def test_ply_reader_reads_by_property_name_and_skips_extra_ones(tmp_path):
    # Another tool's order, with extra per-vertex properties and no normals.
    props = ["rot_0", "rot_1", "rot_2", "rot_3", "x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2"]
    props += ["f_dc_0", "f_dc_1", "f_dc_2", "extra"]
    row = [1, 0, 0, 0, 1.0, 2.0, 3.0, 0.0, math.log(0.5), 0.0, 0.0, 0.1, 0.2, 0.3, 9.0]
    write_raw_ply(tmp_path / "other.ply", props, [row])
    g = read_ply(tmp_path / "other.ply")
    assert g.means.tolist() == [[1.0, 2.0, 3.0]]
    assert g.opacities.item() == pytest.approx(0.5)
    assert g.scales.tolist()[0] == pytest.approx([0.5, 1.0, 1.0])
    assert g.colors[0, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])

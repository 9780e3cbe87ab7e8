"""Rendering speed: frames per second of each available backend on a face-like scene; one JSON line.

Scene: N flat Gaussians on a head-sized ellipsoid (cm, face along +z), seen from 55 cm with a 30 degree
field of view, so most Gaussians cover a few pixels at 512^2, like a portrait avatar. The same run times
gsplat's pure-torch projection + tile binning (gsplat.cuda._torch_impl, the only part of gsplat that
runs without CUDA) on the same frames, for the counts in --torch-counts at 512^2: the CPU baseline a
user would otherwise have, and it does not even composite. It also counts the packed float
instructions in the compositing kernel's machine code, by register width: what LLVM vectorised.

    PYTHONPATH=. python benchmarks/render.py                     # full grid
    PYTHONPATH=. python benchmarks/render.py --counts 100000 --sizes 512 --scenes portrait
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import re
import statistics
import time

import numba
import numpy as np
import torch

from renderers import Camera, Gaussians, rasterize
from renderers.rasterize import _render_cpu


def face_like_scene(n: int, seed: int = 0, front_only: bool = False) -> Gaussians:
    """n Gaussians tangent to an ellipsoid with semi-axes 8 x 11 x 9.5 cm, sized to tile its surface.

    front_only puts all n on the half facing +z (the camera), like the portrait avatar of Talk, which
    has Gaussians only where the portrait shows the head; otherwise they cover the whole head.
    """
    g = torch.Generator().manual_seed(seed)
    axes = torch.tensor([8.0, 11.0, 9.5])
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    if front_only:
        dirs[:, 2] = dirs[:, 2].abs()
    means = dirs * axes
    normals = torch.nn.functional.normalize(means / axes**2, dim=1)
    # Quaternion turning +z onto the normal: (1 + n.z, z x n) normalised.
    quats = torch.stack([1 + normals[:, 2], -normals[:, 1], normals[:, 0], torch.zeros(n)], 1)
    quats[normals[:, 2] < -0.999] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    p = 1.6075  # Knud Thomsen's approximation of the ellipsoid's area
    a, b, c = axes.tolist()
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    spacing = math.sqrt(area / (2 * n if front_only else n))
    tangential = spacing * (0.5 + 0.7 * torch.rand(n, 2, generator=g))
    scales = torch.cat([tangential, 0.1 * spacing * torch.ones(n, 1)], 1)
    opacities = 0.6 + 0.4 * torch.rand(n, generator=g)
    skin = torch.tensor([0.85, 0.65, 0.55])
    colors = (skin + 0.1 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    return Gaussians(means, quats, scales, opacities, colors)


def time_renders(
    scene: Gaussians, cam: Camera, backend: str, min_seconds: float, max_reps: int
) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of repeated renders after one warm-up render."""
    rasterize(scene, cam, backend=backend)  # warm-up (JIT, caches, CUDA context)
    walls: list[float] = []
    cpus: list[float] = []
    start = time.perf_counter()
    while len(walls) < max_reps and (time.perf_counter() - start < min_seconds or len(walls) < 3):
        if scene.device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        rasterize(scene, cam, backend=backend)
        if scene.device.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def time_gsplat_torch_binning(scene: Gaussians, cam: Camera) -> float:
    """Seconds for gsplat's pure-torch projection + tile intersection + offsets on the CPU."""
    from gsplat.cuda._torch_impl import (
        _fully_fused_projection,
        _isect_offset_encode,
        _isect_tiles,
        _quat_scale_to_covar_preci,
    )

    t0 = time.perf_counter()
    covars, _ = _quat_scale_to_covar_preci(scene.quats, scene.scales, compute_preci=False)
    radii, means2d, depths, _, _ = _fully_fused_projection(
        scene.means,
        covars,
        cam.world_to_camera[None],
        cam.K[None],
        cam.width,
        cam.height,
        near_plane=cam.near,
    )
    tiles_w, tiles_h = math.ceil(cam.width / 16), math.ceil(cam.height / 16)
    _, isect_ids, _ = _isect_tiles(means2d, radii, depths, 16, tiles_w, tiles_h)
    _isect_offset_encode(isect_ids, 1, tiles_w, tiles_h)
    return time.perf_counter() - t0


def packed_float_ops() -> dict[str, int]:
    """Packed float arithmetic in the compositing kernel's machine code, by register: zmm = 16 float32
    lanes, ymm = 8, xmm = 4 (or a scalar; SSE/AVX scalars use xmm too, so xmm counts are an upper bound)."""
    from renderers import _cpu

    kernel = _cpu._composite_tile
    if not kernel.signatures:  # loaded inside _composite from numba's cache: compile this one to read it
        n, tiles_x = 4, 1
        kernel(
            0, np.zeros((n, _cpu.N_PARAMS), np.float32), np.zeros((n, 4), np.int32), np.zeros(2, np.int64),
            np.zeros(0, np.int32), tiles_x, 16, 16, np.zeros(3, np.float32), np.zeros((16, 16, 3), np.float32),
            np.zeros((16, 16), np.float32), np.zeros((16, 16), np.float32), np.float32(1e-4),
        )  # fmt: skip
    asm = kernel.inspect_asm(kernel.signatures[0])
    ops = re.findall(r"\bv(?:mul|add|sub|min|max|cmp\w*)ps\s[^\n]*?%(zmm|ymm|xmm)", asm)
    return dict(collections.Counter(ops))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000, 300_000], help="Gaussians")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="square image sizes")
    parser.add_argument(
        "--torch-counts",
        type=int,
        nargs="*",
        default=[100_000],
        help="Gaussian counts (of --counts) at which gsplat's pure-torch path is timed on the same 512^2 "
        "frames (slow: seconds each); none to skip",
    )
    parser.add_argument(
        "--scenes",
        nargs="+",
        choices=["head", "portrait"],
        default=["head", "portrait"],
        help="head: Gaussians all over the head; portrait: only on the half facing the camera",
    )
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="time each case for at least this long"
    )
    parser.add_argument("--max-reps", type=int, default=50, help="at most this many timed renders per case")
    parser.add_argument("--distance", type=float, default=55.0, help="camera distance from the head, cm")
    args = parser.parse_args()

    backends = ["cpu"]
    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401

            backends.append("gsplat")
        except ImportError:
            pass

    t0 = time.perf_counter()
    warm_cam = Camera.look_at((0.0, 0.0, args.distance), width=64, height=64)
    rasterize(face_like_scene(100), warm_cam, backend="cpu")
    first_call_s = time.perf_counter() - t0  # numba JIT compile, or loading its on-disk cache

    results = []
    for scene_name in args.scenes:
        for n in args.counts:
            scene_cpu = face_like_scene(n, front_only=scene_name == "portrait")
            for size in args.sizes:
                cam = Camera.look_at((0.0, 0.0, args.distance), width=size, height=size)
                for backend in backends:
                    scene = scene_cpu.to("cuda") if backend == "gsplat" else scene_cpu
                    walls, cpus = time_renders(scene, cam, backend, args.min_seconds, args.max_reps)
                    med = statistics.median(walls)
                    row = {"scene": scene_name, "backend": backend, "gaussians": n, "size": size}
                    row |= {"fps": round(1 / med, 2), "ms_median": round(1000 * med, 2)}
                    row |= {"ms_min": round(1000 * min(walls), 2), "reps": len(walls)}
                    row["cpu_ms_median"] = round(1000 * statistics.median(cpus), 2)  # summed over threads
                    if backend == "cpu":
                        stages: dict[str, float] = {}
                        _render_cpu(scene, cam, torch.zeros(3), stage_seconds=stages)
                        row["tile_intersections"] = int(stages.pop("intersections"))
                        row["stages_ms"] = {k: round(1000 * v, 2) for k, v in stages.items()}
                        if size == 512 and n in (args.torch_counts or []):
                            seconds = time_gsplat_torch_binning(scene, cam)
                            row["gsplat_torch_project_bin_ms"] = round(1000 * seconds, 1)
                            row["speedup_vs_gsplat_torch"] = round(seconds / med, 1)
                    results.append(row)

    print(
        json.dumps(
            {
                "benchmark": "render",
                "scene": f"ellipsoid 8x11x9.5 cm, camera {args.distance} cm away, fov 30 deg, RGB colours",
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "numba_threads": numba.get_num_threads(),
                    "numba_threading_layer": numba.threading_layer(),
                    "processor": platform.processor() or platform.machine(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                },
                "first_call_seconds": round(first_call_s, 2),
                "results": results,
                "composite_packed_float_ops": packed_float_ops(),
                "note": "wall-clock medians after a warm-up render; shared machines make these noisy",
            }
        )
    )


if __name__ == "__main__":
    main()

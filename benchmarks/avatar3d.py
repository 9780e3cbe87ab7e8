"""Avatar3D speed and quality: portrait → 3D head seconds, render FPS, frontal PSNR/SSIM, holes; one JSON line.

    PYTHONPATH=. python benchmarks/avatar3d.py                        # shipped portrait, 2 CPU threads
    PYTHONPATH=. python benchmarks/avatar3d.py --sheet turntable.png  # also a contact sheet of the turntable

- build_cpu_s: CPU seconds (all threads) of the build; on a shared machine the wall time is inflated.
- fit_s: face detection + landmarks + ICT fit; build_s: the avatar from the fit (placement, colours,
  completion, refinement); total_s = fit_s + build_s (LAM's 1.4 s on an A100 is the anchor).
- psnr_face / ssim_face: the render at the photo's pose vs the photo crop, inside the face (ICT's face
  region two pixels in from its outline; SSIM over the face's bounding box), before and after refinement.
- worst_alpha: lowest rendered alpha inside the mesh silhouette over yaw 0..345° in 15° steps × pitch
  −30°, 0°, +30° (one pixel in from the silhouette).
- cpu_fps_512: frames per second of one 512² render of the head (posing included) on the CPU backend;
  cuda_fps_512: the same with gsplat on CUDA, when there is a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import cv2
import numpy as np
import torch


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", default=None, help="portrait (default: the shipped one)")
    parser.add_argument("--num-gaussians", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and numba (default: 2)")
    parser.add_argument("--frames", type=int, default=20, help="renders timed for FPS")
    parser.add_argument("--sheet", help="save a contact sheet of 8 turntable views × 3 pitches here (.png)")
    args = parser.parse_args()

    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    from skimage.metrics import structural_similarity

    from models.gaussian_avatar import crop_image, project_points
    from models.head_avatar import HeadAvatarConfig, build_head_avatar, turntable_cameras
    from models.head_model import HeadModel
    from models.latent import NUM_EXPRESSIONS
    from pipelines.image_io import load_image
    from pipelines.talk import DEFAULT_PORTRAIT, fit_portrait
    from renderers import rasterize
    from renderers.mesh_raster import rasterize_mesh

    photo = load_image(args.image or DEFAULT_PORTRAIT)
    head = HeadModel()
    # Warm-up: numba kernels load from their cache, the face models load; neither is per-portrait work.
    fit_portrait(photo)
    warm = build_head_avatar(photo, fit_portrait(photo).to_identity(), np.zeros(NUM_EXPRESSIONS), head,
                             HeadAvatarConfig(num_gaussians=5000, photo_size=128, refinement_steps=1))  # fmt: skip
    rasterize(warm.canonical_gaussians(), turntable_cameras(warm, 1, size=64)[0], backend="cpu")

    start = time.perf_counter()
    fit = fit_portrait(photo)
    fit_s = time.perf_counter() - start
    cfg = HeadAvatarConfig(num_gaussians=args.num_gaussians)
    start = time.perf_counter()
    avatar = build_head_avatar(
        photo,
        fit.to_identity(),
        fit.expression,
        head,
        HeadAvatarConfig(**{**cfg.__dict__, "refinement_steps": 0}),
    )
    build_s = time.perf_counter() - start

    cam = avatar.photo_camera
    crop = crop_image(photo, avatar.crop_box, cam.width)
    frags = rasterize_mesh(
        project_points(avatar.photo_mesh(), cam).numpy(), head.triangles.numpy(), cam.width, cam.height
    )
    face = np.isin(frags.triangle, head.region_triangles("face").numpy()).astype(np.uint8)
    face = cv2.erode(face, np.ones((5, 5), np.uint8)) > 0
    ys, xs = np.nonzero(face)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))

    def quality() -> tuple[float, float]:
        rgb = rasterize(avatar.photo_gaussians(), cam, backend="cpu").rgb.numpy()
        ssim = structural_similarity(rgb[box], crop[box], channel_axis=2, data_range=1.0)
        return _psnr(rgb[face], crop[face]), float(ssim)

    psnr_before, ssim_before = quality()
    # The same build with its refinement passes: their cost and their gain.
    start, cpu_start = time.perf_counter(), time.process_time()
    fresh = build_head_avatar(photo, fit.to_identity(), fit.expression, head, cfg)
    build_refined_s = time.perf_counter() - start
    # CPU seconds of all threads: on a shared machine wall time is inflated by others' work.
    build_cpu_s = time.process_time() - cpu_start
    avatar = fresh
    psnr_after, ssim_after = quality()

    worst, worst_view = 1.0, None
    canonical = avatar.canonical_gaussians()
    mesh = head.shape(avatar.identity, torch.zeros(1, NUM_EXPRESSIONS))[0]
    for pitch in (-30, 0, 30):
        for k, view in enumerate(turntable_cameras(avatar, 24, size=256, pitch=math.radians(pitch))):
            alpha = rasterize(canonical, view, backend="cpu").alpha.numpy()
            sil = (
                rasterize_mesh(project_points(mesh, view).numpy(), head.triangles.numpy(), 256, 256).triangle
                >= 0
            )
            inside = cv2.erode(sil.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            low = float(alpha[inside].min())
            if low < worst:
                worst, worst_view = low, {"yaw_deg": 15 * k, "pitch_deg": pitch}

    front = turntable_cameras(avatar, 1, size=512)[0]
    zero3, zero_expr = torch.zeros(3), torch.zeros(NUM_EXPRESSIONS)

    def fps(device: str, backend: str) -> float:
        moved = avatar.to(device) if device != "cpu" else avatar
        z3, ze = zero3.to(device), zero_expr.to(device)
        rasterize(moved.gaussians(ze, z3, z3), front, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(args.frames):
            yaw = torch.tensor([0.0, 0.3 * math.sin(i / 3), 0.0], device=device)
            out = rasterize(moved.gaussians(ze, yaw, z3), front, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        del out
        return args.frames / (time.perf_counter() - start)

    cpu_fps = fps("cpu", "cpu")
    cuda_fps = None
    if torch.cuda.is_available():
        try:
            cuda_fps = fps("cuda", "gsplat")
        except Exception as err:  # report, do not crash the benchmark
            cuda_fps = f"failed: {err}"

    if args.sheet:
        from PIL import Image

        rows = []
        for pitch in (0, 30, -30):
            views = turntable_cameras(avatar, 8, size=256, pitch=math.radians(pitch))
            rows.append(
                np.concatenate(
                    [rasterize(canonical, v, background=(1, 1, 1), backend="cpu").rgb.numpy() for v in views],
                    1,
                )
            )
        Image.fromarray((np.clip(np.concatenate(rows), 0, 1) * 255).astype(np.uint8)).save(args.sheet)

    print(
        json.dumps(
            {
                "benchmark": "avatar3d",
                "num_gaussians": avatar.num_gaussians,
                "fit_s": round(fit_s, 3),
                "build_s": round(build_refined_s, 3),
                "build_cpu_s": round(build_cpu_s, 3),
                "build_without_refinement_s": round(build_s, 3),
                "total_s": round(fit_s + build_refined_s, 3),
                "psnr_face_db": round(psnr_after, 2),
                "ssim_face": round(ssim_after, 4),
                "psnr_face_unrefined_db": round(psnr_before, 2),
                "ssim_face_unrefined": round(ssim_before, 4),
                "worst_alpha": round(worst, 5),
                "worst_alpha_view": worst_view,
                "cpu_fps_512": round(cpu_fps, 2),
                "cuda_fps_512": round(cuda_fps, 1) if isinstance(cuda_fps, float) else cuda_fps,
                "threads": args.threads,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()

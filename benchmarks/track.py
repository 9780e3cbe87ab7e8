"""Face tracking speed on CPU: detection + 468 landmarks + ICT fit per video frame; prints one JSON line.

Frames are 256×256 crops around a real face (Grace Hopper, moved and rolled a little each frame). Tracking
mode: the detector runs only when the track is lost, the crop follows the previous landmarks, and the fit
is warm-started from the previous frame with the identity fixed. Also times the one-off steps (detection,
a full single-photo fit, a shared-identity fit over 8 frames).

Usage: PYTHONPATH=. python benchmarks/track.py [--frames 300] [--threads 2] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import cv2
import numpy as np


def make_clip(frames: int, size: int) -> list[np.ndarray]:
    from matplotlib import cbook

    from pipelines.image_io import load_image

    image = load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    crop = image[110:390, 130:410]  # the face with a margin, 280 px square
    t = np.arange(frames) / 30.0
    clip = []
    for k in range(frames):
        m = cv2.getRotationMatrix2D((140.0, 140.0), 8 * np.sin(2 * np.pi * 0.5 * t[k]), size / 280.0)
        m[:, 2] += [
            10 * np.sin(2 * np.pi * 0.3 * t[k]) + (size - 280) / 2,
            6 * np.cos(2 * np.pi * 0.2 * t[k]) + (size - 280) / 2,
        ]
        clip.append(cv2.warpAffine(crop, m, (size, size), borderMode=cv2.BORDER_REPLICATE))
    return clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="TFLite threads (numpy's solver uses one)")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--iterations", type=int, default=4, help="solver iterations per frame")
    parser.add_argument("--no-iris", action="store_true", help="skip the iris model (no gaze)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from models.face_tracker import FaceTracker, FaceTrackerConfig
    from models.fitting import FaceFitter, FitConfig, OneEuroFilter

    clip = make_clip(args.frames, args.size)
    start = time.perf_counter()
    tracker = FaceTracker(FaceTrackerConfig(num_threads=args.threads, iris=not args.no_iris))
    fitter = FaceFitter(FitConfig(tracking_iterations=args.iterations))
    setup_s = time.perf_counter() - start

    # One-off steps.
    t0 = time.perf_counter()
    for _ in range(20):
        detections = tracker.detect(clip[0])
    detect_ms = (time.perf_counter() - t0) / 20 * 1000
    assert detections, "no face in the benchmark clip"
    marks = tracker.faces(clip[0])[0]
    t0 = time.perf_counter()
    first = fitter.fit_image(marks.points, (args.size, args.size))
    fit_image_ms = (time.perf_counter() - t0) * 1000
    keys = [tracker.faces(clip[i])[0].points for i in np.linspace(0, args.frames - 1, 8).astype(int)]
    t0 = time.perf_counter()
    fitter.fit_frames(keys, (args.size, args.size))
    fit_identity_ms = (time.perf_counter() - t0) * 1000

    # Tracking loop.
    tracker.reset()
    tracker.redetections = 0
    smoother = OneEuroFilter()
    landmark_s = fit_s = 0.0
    fit = first
    errors = []
    loop_start = time.perf_counter()
    for frame in clip:
        t0 = time.perf_counter()
        found = tracker.track(frame)
        t1 = time.perf_counter()
        if found is not None:  # landmarks_ms covers the mesh (and iris) models, fit_ms the ICT fit and gaze
            points = smoother(found.with_iris() / found.inter_ocular, 1 / 30.0) * found.inter_ocular
            fit = fitter.track(points, fit)
            errors.append(fit.relative_error)
        t2 = time.perf_counter()
        landmark_s += t1 - t0
        fit_s += t2 - t1
    total_s = time.perf_counter() - loop_start
    n = len(clip)
    print(
        json.dumps(
            {
                "benchmark": "track",
                "frames": n,
                "frame_size": args.size,
                "threads": args.threads,
                "iris": not args.no_iris,
                "fps": round(n / total_s, 1),
                "ms_per_frame": round(total_s / n * 1000, 2),
                "landmarks_ms": round(landmark_s / n * 1000, 2),
                "fit_ms": round(fit_s / n * 1000, 2),
                "redetections": tracker.redetections,
                "frames_tracked": len(errors),
                "mean_landmark_error_iod": round(float(np.mean(errors)), 4),
                "detect_ms": round(detect_ms, 2),
                "fit_image_ms": round(fit_image_ms, 1),
                "fit_identity_8_frames_ms": round(fit_identity_ms, 1),
                "setup_s": round(setup_s, 2),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()

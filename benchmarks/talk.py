"""Talk speed: avatar build time and the real-time factor of portrait + speech → mp4; prints one JSON line.

    python benchmarks/talk.py                       # shipped portrait and speech, 512² crop, CPU
    python benchmarks/talk.py --size auto           # the crop at its size in the photo (Talk's default)
    python benchmarks/talk.py --seconds 600         # 10 minutes of speech (the sample looped): memory stays flat
    python benchmarks/talk.py --sheet out.png       # also save a contact sheet of frames

RTF = wall time of (motion generation + rendering + paste-back + encoding) / audio duration; the avatar
build (face detection, fitting, avatar) and the first motion generation of a process (kernel compilation)
are timed separately, as a user pays them once per portrait and once per process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.gaussian_avatar import PortraitAvatarConfig, build_portrait_avatar
from models.head_model import HeadModel
from pipelines.audio_io import load_audio, save_wav
from pipelines.image_io import load_image
from pipelines.talk import (
    DEFAULT_AUDIO,
    DEFAULT_PORTRAIT,
    TalkConfig,
    fit_portrait,
    render_frames,
    speech_motion,
)
from pipelines.video_io import VideoWriter


def contact_sheet(frames: list[np.ndarray], columns: int = 4, width: int = 256) -> np.ndarray:
    """Frames side by side in a grid, each resized to `width` pixels wide."""
    import cv2

    h, w = frames[0].shape[:2]
    height = round(h * width / w)
    tiles = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", default=str(DEFAULT_PORTRAIT))
    parser.add_argument("--audio", default=str(DEFAULT_AUDIO))
    parser.add_argument(
        "--size", default="512", help="render size, or 'auto' (Talk's default: the crop's size)"
    )
    parser.add_argument("--seconds", type=float, default=0.0, help="loop the audio to this length (0: as is)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sheet", help="save a contact sheet PNG of 8 frames here")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = None if args.size == "auto" else int(args.size)

    photo = load_image(args.image)
    head = HeadModel()
    # Warm-up (numba compilation, model loading) on a first build; then time a fresh build.
    fit = fit_portrait(photo)
    build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=size)
    )
    start = time.perf_counter()
    fit = fit_portrait(photo)
    fit_s = time.perf_counter() - start
    avatar = build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=size)
    )
    build_s = time.perf_counter() - start
    if args.device == "cuda":
        avatar = avatar.to("cuda")

    samples = load_audio(args.audio)
    if args.seconds > 0:
        repeats = int(np.ceil(args.seconds * 16000 / len(samples)))
        samples = np.tile(samples, repeats)[: int(args.seconds * 16000)]
    duration = len(samples) / 16000
    cfg = TalkConfig(steps=args.steps)
    # The first generation in a process compiles librosa's and torch's kernels: timed on its own.
    start = time.perf_counter()
    speech_motion(samples[:16000], cfg)
    motion_first_call_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        audio_path = save_wav(samples, Path(tmp) / "speech.wav")
        start = time.perf_counter()
        motion = speech_motion(samples, cfg)
        motion_s = time.perf_counter() - start
        picks = set(np.linspace(0, motion.num_frames - 1, 8).round().astype(int).tolist())
        kept = []
        render_start = time.perf_counter()
        backend = "gsplat" if args.device == "cuda" else "cpu"
        with VideoWriter(Path(tmp) / "out.mp4", motion.fps, audio=audio_path) as writer:
            for i, frame in enumerate(render_frames(photo, avatar, motion, backend=backend)):
                writer.write(frame)
                if i in picks:
                    kept.append(frame)
        render_s = time.perf_counter() - render_start
    total = motion_s + render_s
    if args.sheet:
        from PIL import Image

        Image.fromarray(contact_sheet(kept)).save(args.sheet)
    print(
        json.dumps(
            {
                "benchmark": "talk",
                "device": args.device,
                "size": avatar.camera.width,
                "gaussians": avatar.num_gaussians,
                "audio_s": round(duration, 2),
                "frames": motion.num_frames,
                "fit_s": round(fit_s, 3),
                "avatar_build_s": round(build_s, 3),
                "motion_first_call_s": round(motion_first_call_s, 3),
                "motion_s": round(motion_s, 3),
                "render_encode_s": round(render_s, 3),
                "render_fps": round(motion.num_frames / render_s, 2),
                "rtf": round(total / duration, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "machine": f"{platform.machine()} {torch.get_num_threads()} torch thread(s)",
            }
        )
    )


if __name__ == "__main__":
    main()

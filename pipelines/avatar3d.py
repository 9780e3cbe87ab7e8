"""Avatar3D: one portrait → an animatable 3D Gaussian head (.ply, .splat, turntable, talking video).

    python -m pipelines.avatar3d -o out/                          # the shipped portrait
    python -m pipelines.avatar3d --image me.jpg -o out/ --text "Hello there" --camera orbit
    python -m pipelines.avatar3d --avatar out/avatar.safetensors -o out/ --audio speech.wav

Writes into the output folder:

- ``head.ply``: the head at a neutral expression as a standard INRIA 3DGS .ply (opacity logits, log
  scales, wxyz quaternions, SH DC colours) in **metres, y up, face towards +z** — glTF's and three.js's
  axes, so SuperSplat, gsplat's viewers and ``gr.Model3D`` show it upright at a human scale (in cm a
  head would be a 25 m giant to viewers that assume metres);
- ``head.splat``: the same Gaussians for antimatter15-style web viewers;
- ``turntable.mp4``: one turn around the head;
- ``avatar.safetensors``: the animatable avatar (mesh-bound Gaussians, colours, identity), reusable with
  ``--avatar``;
- ``talk3d.mp4`` when a driver (``--audio``, ``--text``, ``--motion``, ``--driving``) is given: the 3D
  head speaking it, seen from ``--camera front`` or ``orbit``.

Everything is computed before the first file is written, and each file is written atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from models.errors import HeadsplatError
from models.head_avatar import HeadAvatar, HeadAvatarConfig, build_head_avatar, turntable_cameras
from models.head_model import HeadModel
from pipelines.avatar_io import load_avatar, save_avatar
from pipelines.talk import (
    DEFAULT_PORTRAIT,
    EMOTIONS,
    TalkConfig,
    add_motion_arguments,
    check_motion_controls,
    fit_portrait,
    make_motion,
    resolve_device,
)
from renderers import Camera, Gaussians, rasterize, write_ply, write_splat

#: The .ply and .splat are written in metres; the avatar works in the head model's cm.
CM_PER_METRE = 100.0
#: Smallest face (inter-ocular distance, photo pixels) the 3D head is built from.
MIN_INTER_OCULAR_PX = 24.0
CAMERAS = ("front", "orbit")


@dataclass
class Avatar3DConfig:
    """Everything `avatar3d` needs; the CLI and the app fill it in."""

    image: str = str(DEFAULT_PORTRAIT)
    """Portrait photo (any common image format); the largest face is used unless face_index says otherwise."""
    output: str = "avatar3d"
    """Folder the files go into (it must exist)."""
    avatar: str | None = None
    """A built avatar (.safetensors) to reuse instead of building one from `image`."""
    audio: str | None = None
    """Speech for the talking 3D head (wav, mp3, m4a, flac, ogg, or a video's audio track)."""
    text: str | None = None
    """Text to speak with espeak-ng or flite (used when no audio is given)."""
    motion: str | None = None
    """A motion file (.npz, .json, or Live Link Face .csv) to play."""
    driving: str | None = None
    """A video of a talking face whose tracked motion drives the head (its audio is kept)."""
    camera: str = "front"
    """Camera of the talking video: front (still, in front of the face) or orbit (one turn per 8 s)."""
    num_gaussians: int = 100_000
    """Surface Gaussians of the head (the mouth interior adds about 19k)."""
    size: int = 512
    """Side of the square videos, pixels."""
    fps: float = 25.0
    """Frames per second of the videos."""
    turntable_seconds: float = 4.0
    """Length of the turntable (one full turn), seconds; 0 skips it."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] behind the head in the videos."""
    steps: int = 3
    """Sampling steps of the motion diffusion model (0: the rule-based teacher alone)."""
    seed: int = 0
    """Seed of head motion, blinks and gaze (and of anything random in the build)."""
    emotion: str = "neutral"
    """Facial emotion of generated motion: neutral, happy, sad, angry or surprised."""
    expression_scale: float = 1.0
    """Multiplies facial expression (mouth and brows)."""
    pose_scale: float = 1.0
    """Multiplies head movement; 0 keeps the head still."""
    blink_rate: float = 1.0
    """Multiplies the natural blink rate."""
    still: bool = False
    """No head movement: only the face talks."""
    face_index: int = 0
    """Which face to use when the photo has several (0 is the largest)."""
    device: str = "auto"
    """auto, cpu or cuda: where frames are rendered (cuda needs gsplat); the build runs on the CPU."""
    progress: bool = True
    """Show progress bars."""

    @property
    def has_driver(self) -> bool:
        return any(getattr(self, n) for n in ("audio", "text", "motion", "driving"))


# ------------------------------------------------------------------------------------------------
# Avatar files
def save_head_avatar(avatar: HeadAvatar, path: str | os.PathLike) -> Path:
    """Write a 3D head avatar atomically (.safetensors, metadata as JSON in the header)."""
    return save_avatar(avatar, path)


def load_head_avatar(path: str | os.PathLike, head: HeadModel | None = None) -> HeadAvatar:
    """Read a 3D head avatar written by `save_head_avatar`."""
    return load_avatar(path, head, kind=HeadAvatar)


def to_metres(gaussians: Gaussians) -> Gaussians:
    """The same Gaussians with positions and sizes in metres (the .ply/.splat unit)."""
    g = gaussians.to("cpu")
    return Gaussians(g.means / CM_PER_METRE, g.quats, g.scales / CM_PER_METRE, g.opacities, g.colors)


# ------------------------------------------------------------------------------------------------
# Steps
def build_from_photo(cfg: Avatar3DConfig, head: HeadModel) -> HeadAvatar:
    """Load the portrait, fit the head and build its 3D avatar."""
    from pipelines.files import require_file
    from pipelines.image_io import DEFAULT_MAX_SIDE, load_image

    photo = load_image(require_file(cfg.image, "portrait"), max_side=DEFAULT_MAX_SIDE)
    fit = fit_portrait(photo, cfg.face_index)
    if fit.inter_ocular_px and fit.inter_ocular_px < MIN_INTER_OCULAR_PX:
        raise HeadsplatError(
            f"the face is too small ({fit.inter_ocular_px:.0f} px between the eyes; at least "
            f"{MIN_INTER_OCULAR_PX:.0f} needed): use a larger or closer photo"
        )
    return build_head_avatar(
        photo, fit.to_identity(), fit.expression, head, HeadAvatarConfig(num_gaussians=cfg.num_gaussians)
    )


def front_camera(avatar: HeadAvatar, size: int) -> Camera:
    """A camera straight in front of the face, framing the head and neck."""
    return turntable_cameras(avatar, 1, size=size)[0]


def talking_cameras(avatar: HeadAvatar, kind: str, num_frames: int, fps: float, size: int) -> list[Camera]:
    """One camera per frame: still in front (`front`) or turning about the head once every 8 s (`orbit`)."""
    if kind == "front":
        return [front_camera(avatar, size)] * num_frames
    period = 8.0 * fps
    cams = []
    for i in range(num_frames):
        cams.append(turntable_cameras(avatar, 1, size=size, yaw=2.0 * math.pi * i / period)[0])
    return cams


def render_rgb(gaussians: Gaussians, camera: Camera, background, backend: str) -> np.ndarray:
    """One RGB uint8 frame [H, W, 3]."""
    out = rasterize(gaussians, camera, background=torch.tensor(background), backend=backend)
    return np.clip(np.rint(out.rgb.cpu().numpy() * 255.0), 0, 255).astype(np.uint8)


def _talk_config(cfg: Avatar3DConfig) -> TalkConfig:
    shared = {f.name for f in fields(TalkConfig)} & {f.name for f in fields(Avatar3DConfig)}
    values = {
        n: getattr(cfg, n) for n in shared if n not in ("image", "output", "device", "progress", "face_index")
    }
    return TalkConfig(**values)


def _check(cfg: Avatar3DConfig) -> Path:
    from pipelines.cli import check_writable_folder

    out = Path(cfg.output)
    if not out.is_dir():
        raise HeadsplatError(f"output folder does not exist: {out} (create it first)")
    check_writable_folder(out)
    inputs = [p for p in (cfg.image, cfg.avatar, cfg.audio, cfg.motion, cfg.driving) if p]
    names = ["head.ply", "head.splat", "turntable.mp4", "talk3d.mp4"] + (
        [] if cfg.avatar else ["avatar.safetensors"]
    )
    for name in names:
        target = os.path.realpath(out / name)
        if any(os.path.realpath(p) == target for p in inputs):
            raise HeadsplatError(f"{out / name} would overwrite an input; choose another output folder")
    if cfg.camera not in CAMERAS:
        raise HeadsplatError(f"--camera must be one of {', '.join(CAMERAS)}; got {cfg.camera!r}")
    if cfg.emotion not in EMOTIONS:
        raise HeadsplatError(f"unknown --emotion {cfg.emotion!r}; choose one of {', '.join(EMOTIONS)}")
    if not 64 <= cfg.size <= 2048:
        raise HeadsplatError(f"--size must be between 64 and 2048 pixels; got {cfg.size}")
    if not 1 <= cfg.fps <= 120:
        raise HeadsplatError(f"--fps must be from 1 to 120; got {cfg.fps}")
    if not 5_000 <= cfg.num_gaussians <= 2_000_000:
        raise HeadsplatError(f"--num-gaussians must be between 5000 and 2000000; got {cfg.num_gaussians}")
    if not (math.isfinite(cfg.turntable_seconds) and 0 <= cfg.turntable_seconds <= 600):
        raise HeadsplatError(f"--turntable-seconds must be from 0 to 600; got {cfg.turntable_seconds}")
    check_motion_controls(cfg)
    return out


def avatar3d(cfg: Avatar3DConfig) -> dict[str, Path]:
    """Run Avatar3D end to end; returns the written files by name."""
    from tqdm import tqdm

    from pipelines.video_io import VideoWriter

    out = _check(cfg)
    device = resolve_device(cfg.device)
    backend = "gsplat" if device == "cuda" else "cpu"
    torch.manual_seed(cfg.seed)  # the build is deterministic; the seed drives the generated motion
    head = HeadModel()
    avatar = load_head_avatar(cfg.avatar, head) if cfg.avatar else build_from_photo(cfg, head)
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="headsplat-") as tmp:
        motion, audio = make_motion(_talk_config(cfg), Path(tmp)) if cfg.has_driver else (None, None)
        if motion is not None and motion.num_frames == 0:
            raise HeadsplatError("the driver is too short to make a single frame")
        # Everything the user could get wrong has been checked: now the files.
        canonical = avatar.canonical_gaussians()
        if not cfg.avatar:
            written["avatar"] = save_head_avatar(avatar, out / "avatar.safetensors")
        metric = to_metres(canonical)
        write_ply(out / "head.ply", metric)
        written["ply"] = out / "head.ply"
        write_splat(out / "head.splat", metric)
        written["splat"] = out / "head.splat"
        render_avatar = avatar.to(device) if device != "cpu" else avatar
        n_turn = int(round(cfg.turntable_seconds * cfg.fps))
        if n_turn:
            canonical_dev = canonical.to(device)
            path = out / "turntable.mp4"
            with VideoWriter(path, cfg.fps) as writer:
                for cam in tqdm(
                    turntable_cameras(avatar, n_turn, size=cfg.size), desc="turntable", unit="frame",
                    disable=not cfg.progress, file=sys.stderr,
                ):  # fmt: skip
                    writer.write(render_rgb(canonical_dev, cam, cfg.background, backend))
            written["turntable"] = path
        if motion is not None:
            path = out / "talk3d.mp4"
            cams = talking_cameras(avatar, cfg.camera, motion.num_frames, motion.fps, cfg.size)
            with VideoWriter(path, motion.fps, audio=audio) as writer:
                for i in tqdm(
                    range(motion.num_frames), desc="talk3d", unit="frame", disable=not cfg.progress,
                    file=sys.stderr,
                ):  # fmt: skip
                    g = render_avatar.gaussians_motion(motion, i)
                    writer.write(render_rgb(g, cams[i], cfg.background, backend))
            written["talk"] = path
    return written


# ------------------------------------------------------------------------------------------------
# CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.avatar3d",
        description="Turn one portrait into an animatable 3D Gaussian head: head.ply (metres, y up), "
        "head.splat, turntable.mp4, avatar.safetensors, and with a driver a talking 3D video (talk3d.mp4).",
    )
    parser.add_argument(
        "-s", "--image", default=str(DEFAULT_PORTRAIT), help="portrait photo (default: the shipped one)"
    )
    parser.add_argument("-o", "--output", default=".", help="existing folder for the outputs (default: .)")
    parser.add_argument("--avatar", help="reuse a built avatar.safetensors instead of building from --image")
    parser.add_argument(
        "--camera", default="front", choices=CAMERAS, help="camera of the talking video (default: front)"
    )
    parser.add_argument(
        "--num-gaussians", type=int, default=100_000, help="surface Gaussians of the head (default: 100000)"
    )
    parser.add_argument("--size", type=int, default=512, help="video side in pixels (default: 512)")
    parser.add_argument(
        "--turntable-seconds", type=float, default=4.0, help="turntable length, 0 skips it (default: 4)"
    )
    add_motion_arguments(parser, "head")
    return parser


def config_from_args(args: argparse.Namespace) -> Avatar3DConfig:
    names = {f.name for f in fields(Avatar3DConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return Avatar3DConfig(**values, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import run_cli

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    torch.set_num_threads(1)  # numba renders in parallel; torch's own threads would only fight it
    start = time.perf_counter()

    def work() -> None:
        written = avatar3d(cfg)
        names = ", ".join(p.name for p in written.values())
        print(f"wrote {names} to {Path(cfg.output)} in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    return run_cli(work, interrupted="interrupted; files already finished were kept, none is half-written")


if __name__ == "__main__":
    sys.exit(main())

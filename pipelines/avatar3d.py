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

Everything is computed before the first file is written, and the files appear together at the end: an
interrupted or failed run leaves none of them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.errors import HeadsplatError

# Re-exported: the config and the viewer's numbers live where the app reads them without loading torch.
from pipelines.avatar3d_config import CAMERAS as CAMERAS  # noqa: I001
from pipelines.avatar3d_config import (
    SPLAT_VIEWER_FOCAL_PX,
    SPLAT_VIEWER_ORBIT,
    SPLAT_VIEWER_RADIUS,
    VIEWER_HEIGHT,
    Avatar3DConfig,
)
from pipelines.device import resolve_device
from pipelines.drivers import generator_parser, make_motion, run_generator
from pipelines.lazy import bind, bind_unless_main
from pipelines.portrait import fit_portrait, load_portrait

if TYPE_CHECKING:  # bound by pipelines.lazy (see _HEAVY)
    import torch

    from models.head_avatar import HeadAvatar, HeadAvatarConfig, build_head_avatar, turntable_cameras
    from models.head_model import HeadModel
    from models.transforms import euler_to_matrix, matrix_to_quaternion, quaternion_multiply
    from pipelines.avatar_io import load_avatar, save_avatar
    from pipelines.splat_io import read_ply, write_ply, write_splat
    from renderers import Camera, Gaussians, rasterize

#: Names this module uses that import torch, numba and the renderer (see pipelines.lazy).
_HEAVY = {
    "torch": "torch",
    **{
        name: f"models.head_avatar:{name}"
        for name in ("HeadAvatar", "HeadAvatarConfig", "build_head_avatar", "turntable_cameras")
    },
    "HeadModel": "models.head_model:HeadModel",
    **{
        name: f"models.transforms:{name}"
        for name in ("euler_to_matrix", "matrix_to_quaternion", "quaternion_multiply")
    },
    "load_avatar": "pipelines.avatar_io:load_avatar",
    "save_avatar": "pipelines.avatar_io:save_avatar",
    "read_ply": "pipelines.splat_io:read_ply",
    "write_ply": "pipelines.splat_io:write_ply",
    "write_splat": "pipelines.splat_io:write_splat",
    **{name: f"renderers:{name}" for name in ("Camera", "Gaussians", "rasterize")},
}
bind_unless_main(globals(), _HEAVY)

#: The .ply and .splat are written in metres; the avatar works in the head model's cm.
CM_PER_METRE = 100.0
#: Smallest face (inter-ocular distance, photo pixels) the 3D head is built from.
MIN_INTER_OCULAR_PX = 24.0


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


def for_splat_viewer(
    gaussians: Gaussians, height: float = VIEWER_HEIGHT, fill: float = 0.9, framed: float = 0.8
) -> Gaussians:
    """A copy of head.ply's Gaussians (metres, y up, face towards +z) that gsplat.js, the splat viewer of
    Gradio's gr.Model3D, shows face on, upright and filling a viewer `height` CSS pixels tall.

    gsplat.js ignores camera_position. Its camera looks at the origin from `SPLAT_VIEWER_RADIUS` = 5 units
    away at orbit angles alpha = beta = 0.5 rad, from (5 sin a cos b, -5 sin b, -5 cos a cos b) = (2.10,
    -2.40, -3.85), with OpenCV's camera axes (x right, y down, z forward: camera-to-world rotation
    Ry(-alpha) Rx(-beta)) and a 1132 px focal length whatever the canvas's size; its world is y down, like
    COLMAP's. A standard file shows there 5 m away (a head ~60 px tall), from behind and below, upside down.

    The copy is the head
    1. centred at that orbit target: the middle of the top `framed` of its height (head, neck and collar;
       the rest of the shoulder band falls below the viewer) and of that part's width and depth;
    2. turned by Ry(-alpha) Rx(pi - beta), the camera's rotation after a half turn about its x axis, which
       takes the head's axes (x right, y up, z out of the face) to the camera's: the face looks straight
       at the camera, its top up on screen;
    3. scaled so that, seen in perspective from that camera, the framed part is `fill` of `height` pixels
       tall and fits in a square of that side (a portrait's head is taller than wide).
    Bounds are the 0.2-99.8% quantiles of the centres of the Gaussians at least half opaque, so a few stray
    splats do not shrink the head.

    Centres, quaternions and sizes turn and scale together (one rigid turn, one uniform scale). gsplat.js
    reads only the DC colour, so SH bands above it, which would have to be turned too, are left out. The
    viewer orbits about its world's y axis, which is tilted beta (29°) from the head's up: making the two
    one would show the face from 29° above at first. For that viewer only: downloads stay standard.
    """
    bind(globals(), _HEAVY)
    g = gaussians.to("cpu")
    if len(g) == 0:
        return g
    alpha, beta = SPLAT_VIEWER_ORBIT
    turn = euler_to_matrix(torch.tensor([math.pi - beta, -alpha, 0.0], dtype=torch.float64))
    seen = g.opacities >= 0.5
    centres = (g.means[seen] if seen.any() else g.means).double()
    y_lo, y_hi = torch.quantile(centres[:, 1], torch.tensor([0.002, 0.998], dtype=torch.float64))
    bottom = y_hi - framed * (y_hi - y_lo)
    part = centres[centres[:, 1] >= bottom]  # the framed part: its width and depth, not the shoulders'
    lo, hi = torch.quantile(part, 0.002, dim=0), torch.quantile(part, 0.998, dim=0)
    pivot = torch.stack([(lo[0] + hi[0]) / 2, (bottom + y_hi) / 2, (lo[2] + hi[2]) / 2])
    half_size = max(float(y_hi - bottom), float(hi[0] - lo[0]), 1e-9) / 2
    nearest = float(hi[2] - pivot[2])  # how much nearer the camera than the target the face's front is
    # Scaled by s, a point half_size off the view axis and `nearest` before the target is seen
    # f s half_size / (R - s nearest) pixels off the centre; this s makes that the target half-height.
    target = fill * height / 2
    scale = target * SPLAT_VIEWER_RADIUS / (SPLAT_VIEWER_FOCAL_PX * half_size + target * nearest)
    means = (g.means.double() - pivot) @ turn.T * scale
    quats = quaternion_multiply(matrix_to_quaternion(turn).expand(len(g), 4), g.quats.double())
    colors = g.colors if g.colors.ndim == 2 else g.colors[:, :1]
    return Gaussians(means.float(), quats.float(), g.scales * scale, g.opacities, colors)


def write_viewer_ply(ply: str | os.PathLike, height: float = VIEWER_HEIGHT) -> Path:
    """Write next to a head.ply its copy for gr.Model3D's splat viewer (`for_splat_viewer`), as
    head_viewer.ply; returns its path. The head.ply itself is left as it is."""
    bind(globals(), _HEAVY)
    ply = Path(ply)
    return write_ply(ply.with_name(f"{ply.stem}_viewer.ply"), for_splat_viewer(read_ply(ply), height))


# ------------------------------------------------------------------------------------------------
# Steps
def build_from_photo(cfg: Avatar3DConfig, head: HeadModel) -> HeadAvatar:
    """Load the portrait, fit the head and build its 3D avatar."""
    photo = load_portrait(cfg.image)
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


def _check(cfg: Avatar3DConfig) -> Path:
    """The output folder, after the checks every Avatar3D run makes before any work."""
    from pipelines.cli import check_writable_folder, same_file

    cfg.check()
    out = Path(cfg.output)
    if not out.is_dir():
        raise HeadsplatError(f"output folder does not exist: {out} (create it first)")
    check_writable_folder(out)
    inputs = [p for p in (cfg.image, cfg.avatar, cfg.audio, cfg.motion, cfg.driving) if p]
    names = ["head.ply", "head.splat", "turntable.mp4", "talk3d.mp4"] + (
        [] if cfg.avatar else ["avatar.safetensors"]
    )
    for name in names:
        if any(same_file(p, out / name) for p in inputs):
            raise HeadsplatError(f"{out / name} would overwrite an input; choose another output folder")
    return out


def avatar3d(cfg: Avatar3DConfig) -> dict[str, Path]:
    """Run Avatar3D end to end; returns the written files by name."""
    bind(globals(), _HEAVY)
    from tqdm import tqdm

    from pipelines.video_io import VideoWriter

    out = _check(cfg)
    device = resolve_device(cfg.device, rendering=True)
    backend = "cpu" if device == "cpu" else "gsplat"
    torch.manual_seed(cfg.seed)  # the build is deterministic; the seed drives the generated motion
    head = HeadModel()
    avatar = load_head_avatar(cfg.avatar, head) if cfg.avatar else build_from_photo(cfg, head)
    written: dict[str, Path] = {}
    # Every file is made in a hidden staging folder inside `out` and moved into place only when all of
    # them are done: an interrupted or failed run leaves none of them (the staging folder goes too).
    with (
        tempfile.TemporaryDirectory(prefix="headsplat-") as tmp,
        tempfile.TemporaryDirectory(prefix=".avatar3d-", dir=out) as staging_dir,
    ):
        staging = Path(staging_dir)
        motion, audio = make_motion(cfg, Path(tmp)) if cfg.has_driver else (None, None)
        if motion is not None and motion.num_frames == 0:
            raise HeadsplatError("the driver is too short to make a single frame")
        # Everything the user could get wrong has been checked: now the files.
        canonical = avatar.canonical_gaussians()
        if not cfg.avatar:
            written["avatar"] = save_head_avatar(avatar, staging / "avatar.safetensors")
        metric = to_metres(canonical)
        written["ply"] = staging / "head.ply"
        write_ply(written["ply"], metric)
        written["splat"] = staging / "head.splat"
        write_splat(written["splat"], metric)
        render_avatar = avatar.to(device) if device != "cpu" else avatar
        n_turn = int(round(cfg.turntable_seconds * cfg.fps))
        if n_turn:
            canonical_dev = canonical.to(device)
            path = staging / "turntable.mp4"
            with VideoWriter(path, cfg.fps) as writer:
                for cam in tqdm(
                    turntable_cameras(avatar, n_turn, size=cfg.size), desc="turntable", unit="frame",
                    disable=not cfg.progress, file=sys.stderr,
                ):  # fmt: skip
                    writer.write(render_rgb(canonical_dev, cam, cfg.background, backend))
            written["turntable"] = path
        if motion is not None:
            path = staging / "talk3d.mp4"
            cams = talking_cameras(avatar, cfg.camera, motion.num_frames, motion.fps, cfg.size)
            with VideoWriter(path, motion.fps, audio=audio) as writer:
                for i in tqdm(
                    range(motion.num_frames), desc="talk3d", unit="frame", disable=not cfg.progress,
                    file=sys.stderr,
                ):  # fmt: skip
                    g = render_avatar.gaussians_motion(motion, i)
                    writer.write(render_rgb(g, cams[i], cfg.background, backend))
            written["talk"] = path
        for name, path in list(written.items()):
            os.replace(path, out / path.name)
            written[name] = out / path.name
    return written


# ------------------------------------------------------------------------------------------------
# CLI
def build_parser() -> argparse.ArgumentParser:
    description = (
        "Turn one portrait into an animatable 3D Gaussian head: head.ply (metres, y up), head.splat, "
        "turntable.mp4, avatar.safetensors, and with a driver a talking 3D video (talk3d.mp4)."
    )
    return generator_parser(Avatar3DConfig, "python -m pipelines.avatar3d", description)


def main(argv: list[str] | None = None) -> int:
    def run(cfg: Avatar3DConfig) -> str:
        written = avatar3d(cfg)
        return f"{', '.join(p.name for p in written.values())} to {Path(cfg.output)}"

    interrupted = "interrupted; nothing was written"
    return run_generator(build_parser(), Avatar3DConfig, run, argv, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())

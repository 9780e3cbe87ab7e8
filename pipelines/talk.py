"""Talk: a portrait and speech (or text, a motion file, a driving video) → a talking-head mp4.

    python -m pipelines.talk --audio speech.wav                 # the shipped portrait says it
    python -m pipelines.talk -s me.jpg --text "Hello there" -o hello.mp4

Steps: fit the ICT head to the portrait → build (or load from the cache) its Gaussian avatar → make a
`Motion` from the driver → render each frame, paste it back into the photo → H.264 mp4 with the audio.
Frames stream to the encoder as they are made; the output appears only when it is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.errors import HeadsplatError
from models.latent import Motion
from models.mouth_rest import ease_from_photo
from pipelines.device import resolve_device
from pipelines.drivers import DEFAULT_AUDIO as DEFAULT_AUDIO
from pipelines.drivers import MAX_TEXT_CHARS as MAX_TEXT_CHARS
from pipelines.drivers import generator_parser, make_motion, run_generator
from pipelines.drivers import speak as speak
from pipelines.drivers import speech_motion as speech_motion
from pipelines.lazy import bind, bind_unless_main
from pipelines.portrait import DEFAULT_PORTRAIT as DEFAULT_PORTRAIT
from pipelines.portrait import fit_portrait, load_portrait
from pipelines.talk_config import TalkConfig as TalkConfig  # re-exported: the app reads it without torch

if TYPE_CHECKING:  # bound by pipelines.lazy (see _HEAVY)
    from models.gaussian_avatar import PortraitAvatar, PortraitAvatarConfig, build_portrait_avatar
    from models.head_model import HeadModel
    from renderers.compositing import FramePaster, paste_weight

#: Names this module uses that import torch, numba and the renderer (see pipelines.lazy).
_HEAVY = {
    "PortraitAvatar": "models.gaussian_avatar:PortraitAvatar",
    "PortraitAvatarConfig": "models.gaussian_avatar:PortraitAvatarConfig",
    "build_portrait_avatar": "models.gaussian_avatar:build_portrait_avatar",
    "HeadModel": "models.head_model:HeadModel",
    "FramePaster": "renderers.compositing:FramePaster",
    "paste_weight": "renderers.compositing:paste_weight",
}
bind_unless_main(globals(), _HEAVY)

# The names imported `as` themselves moved to pipelines.drivers and pipelines.portrait with the rest of the
# driver layer; they stay importable from here for the benchmarks, tests and scripts that import them so.

#: Bump when the avatar's contents change, so stale cached avatars are rebuilt.
AVATAR_VERSION = 5


# ------------------------------------------------------------------------------------------------
# Portrait → avatar
def _cache_path(image_bytes: bytes, cfg: TalkConfig) -> Path | None:
    root = cfg.cache_dir if cfg.cache_dir is not None else os.environ.get("HEADSPLAT_CACHE", "")
    if cfg.cache_dir == "":
        return None
    base = Path(root) if root else Path.home() / ".cache" / "headsplat"
    key = hashlib.sha256(
        image_bytes + f"|v{AVATAR_VERSION}|{cfg.size}|{cfg.face_index}".encode()
    ).hexdigest()[:24]
    return base / "avatars" / f"{key}.safetensors"


def prepare_avatar(cfg: TalkConfig, head: HeadModel | None = None) -> tuple[np.ndarray, PortraitAvatar]:
    """The photo [H, W, 3] uint8 and its avatar, from the cache when this portrait was built before."""
    from pipelines.avatar_io import load_avatar, save_avatar

    photo = load_portrait(cfg.image, cfg.max_side)
    head = head or HeadModel()
    cache = _cache_path(photo.tobytes() + str(photo.shape).encode(), cfg)
    if cache is not None and cache.exists():
        try:
            avatar = load_avatar(cache, head, kind=PortraitAvatar)
            avatar.silent_mouth = cfg.silent_mouth
            return photo, avatar
        except HeadsplatError:
            cache.unlink(missing_ok=True)  # a stale or broken cache entry is rebuilt
    fit = fit_portrait(photo, cfg.face_index)
    avatar = build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=cfg.size)
    )
    avatar.silent_mouth = cfg.silent_mouth
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_avatar(avatar, cache)
        except (OSError, HeadsplatError) as err:  # the run goes on: the cache only saves the next one time
            warnings.warn(
                f"the avatar cache was not written ({err}); the next run builds it again", stacklevel=2
            )
    return photo, avatar


# ------------------------------------------------------------------------------------------------
# Motion → frames
def frame_paster(photo: np.ndarray, avatar: PortraitAvatar) -> FramePaster:
    """What puts `avatar`'s rendered crops back into `photo`: its moving mask, feathered, at its crop box."""
    feather = max(4.0, 0.02 * (avatar.crop_box[2] - avatar.crop_box[0]))
    weight = paste_weight(avatar.moving_mask, (photo.shape[1], photo.shape[0]), avatar.crop_box, feather)
    size = avatar.background.shape[1], avatar.background.shape[0]
    return FramePaster(photo, size, avatar.crop_box, weight)


def render_frames(
    photo: np.ndarray, avatar: PortraitAvatar, motion: Motion, crop: bool = False, backend: str = "auto"
) -> Iterator[np.ndarray]:
    """RGB uint8 frames, one per motion frame: the full photo with the face pasted back (or the crop).

    The first frames ease from the photo's own face into the avatar's silent rest (see
    models.mouth_rest), so the video starts on the photo.
    """
    offset = avatar.photo_offset().cpu().numpy()
    if np.any(offset):
        motion = Motion(
            ease_from_photo(motion.expression, offset, motion.fps),
            motion.rotation,
            motion.translation,
            motion.fps,
        )
    paster = None if crop else frame_paster(photo, avatar)  # the mask and box stay put: set up once
    for i in range(motion.num_frames):
        yield draw_frame(avatar, motion, i, paster, backend)


def draw_frame(
    avatar: PortraitAvatar, motion: Motion, i: int, paster: FramePaster | None, backend: str = "auto"
) -> np.ndarray:
    """Frame `i` of `motion` as RGB uint8: pasted back into the photo by `paster`, or the crop when None."""
    if paster is None:
        rgb = avatar.render_motion(motion, i, backend=backend)
        return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    rgb, alpha = avatar.render_motion(motion, i, backend=backend, layers=True)
    return paster(rgb, alpha, avatar.background)


def check_config(cfg: TalkConfig) -> Path:
    """The output path, after the checks every Talk run makes before any work (values, output, suffix)."""
    from pipelines.cli import check_output

    cfg.check()
    out = Path(cfg.output)
    if out.suffix.lower() != ".mp4":
        raise HeadsplatError(f"the output must be an .mp4 file; got {out.name!r}")
    inputs = (cfg.image, cfg.audio, cfg.motion, cfg.driving)
    check_output(out, inputs)
    if cfg.save_motion:
        from pipelines.motion_io import MOTION_SUFFIXES

        if Path(cfg.save_motion).suffix.lower() not in MOTION_SUFFIXES:
            raise HeadsplatError(
                f"--save-motion must end in {', '.join(MOTION_SUFFIXES)}; got {cfg.save_motion!r}"
            )
        check_output(cfg.save_motion, (*inputs, out), what="--save-motion file")
    return out


def talk(cfg: TalkConfig, on_frame: Callable[[int, int], None] | None = None) -> Path:
    """Run Talk end to end and return the written mp4's path."""
    bind(globals(), _HEAVY)
    from pipelines.motion_io import save_motion
    from pipelines.video_io import VideoWriter

    out = check_config(cfg)
    device = resolve_device(cfg.device, rendering=True)
    backend = "cpu" if device == "cpu" else "gsplat"
    with tempfile.TemporaryDirectory(prefix="headsplat-") as tmp:
        photo, avatar = prepare_avatar(cfg)  # the portrait first: a photo without a face fails fast
        motion, audio = make_motion(cfg, Path(tmp))
        if motion.num_frames == 0:
            raise HeadsplatError("the driver is too short to make a single frame")
        if device != "cpu":
            avatar = avatar.to(device)
        frames = render_frames(photo, avatar, motion, crop=cfg.crop, backend=backend)
        bar = _progress(motion.num_frames, cfg.progress)
        with VideoWriter(out, motion.fps, audio=audio) as writer:
            for i, frame in enumerate(frames):
                writer.write(frame)
                bar.update(1)
                if on_frame is not None:
                    on_frame(i + 1, motion.num_frames)
        bar.close()
        if cfg.save_motion:  # after the video: an interrupted run leaves neither file
            save_motion(motion, cfg.save_motion, csv_translation=cfg.csv_translation)
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="talk", disable=not enabled, file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# CLI
def build_parser() -> argparse.ArgumentParser:
    description = (
        "Turn a portrait and speech (or text, a motion file, a driving video) into a talking-head mp4. "
        "Without a driver the shipped speech sample is used."
    )
    return generator_parser(TalkConfig, "python -m pipelines.talk", description)


def main(argv: list[str] | None = None) -> int:
    return run_generator(
        build_parser(), TalkConfig, talk, argv, interrupted="interrupted; nothing was written"
    )


if __name__ == "__main__":
    sys.exit(main())

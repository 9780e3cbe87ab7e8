"""Avatar files: one .safetensors holding an avatar's tensors, with its metadata as JSON in the header.

Portrait avatars (Talk) and 3D head avatars (Avatar3D) share the format; the metadata's "kind" says
which one a file holds.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from models.errors import HeadsplatError
from models.gaussian_avatar import MAX_AVATAR_GAUSSIANS, PortraitAvatar, avatar_damaged
from models.head_avatar import HeadAvatar
from models.head_model import HeadModel
from pipelines.files import atomic_output, require_file

AVATAR_KINDS = {"headsplat.portrait_avatar": PortraitAvatar, "headsplat.head_avatar": HeadAvatar}


def save_avatar(avatar: PortraitAvatar | HeadAvatar, path: str | os.PathLike) -> Path:
    """Write an avatar atomically."""
    tensors, meta = avatar.state()
    path = Path(path)
    with atomic_output(path) as tmp:
        try:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={"headsplat": json.dumps(meta)},
            )
        except SafetensorError as err:  # e.g. "No space left on device (os error 28)"
            reason = "no space left on the device" if "os error 28" in str(err) else str(err)
            raise HeadsplatError(f"writing {path.name} failed: {reason}") from err
    return path


#: Largest avatar file read, bytes: 20 million Gaussians (MAX_AVATAR_GAUSSIANS) in float32 take about
#: 1.4 GB, a 4096² background 0.3 GB more. Bigger is no avatar, and is refused before it is read.
MAX_AVATAR_FILE_BYTES = 2 * 1024**3


def load_avatar(path: str | os.PathLike, head: HeadModel | None = None, kind: type | None = None):
    """Read an avatar written by `save_avatar`; `kind` (PortraitAvatar or HeadAvatar) insists on one.

    Damaged or crafted files raise HeadsplatError with one line naming what is wrong: the header is
    checked before any tensor is read (size, metadata, kind, row counts), and every array and metadata
    field before the avatar is made (the avatar class's `from_state`, with its FILE_LAYOUT table).
    """
    path = require_file(path, "avatar file")
    size = path.stat().st_size
    if size > MAX_AVATAR_FILE_BYTES:
        raise HeadsplatError(
            f"{path.name} is {size / 1e9:.1f} GB, more than any headsplat avatar "
            f"({MAX_AVATAR_FILE_BYTES / 1e9:.1f} GB at most); is it the right file?"
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = _metadata(fh.metadata())
            cls = _avatar_class(meta, kind, path)
            # Sizes from the header, so a crafted one is refused before it is allocated: at most
            # MAX_AVATAR_GAUSSIANS rows, and no more numbers than that many quaternions.
            stored = set(fh.keys())
            names = [row[0] for row in cls.FILE_LAYOUT if row[0] in stored]
            for name in names:
                shape = fh.get_slice(name).get_shape()
                if shape and shape[0] > MAX_AVATAR_GAUSSIANS:
                    raise avatar_damaged(f"{name} has {shape[0]} rows, more than {MAX_AVATAR_GAUSSIANS}")
                if math.prod(shape) > 4 * MAX_AVATAR_GAUSSIANS:
                    raise avatar_damaged(f"{name} has {math.prod(shape)} numbers, more than any avatar")
            tensors = {name: fh.get_tensor(name) for name in names}  # tensors it does not use stay unread
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:
        raise HeadsplatError(f"cannot read avatar {path.name}: {' '.join(str(err).split())}") from err
    if head is None:
        num_identity = meta.get("num_identity", 50)
        if not isinstance(num_identity, int) or isinstance(num_identity, bool) or num_identity < 0:
            raise avatar_damaged(f"num_identity must be a whole number >= 0, not {num_identity!r:.40}")
        try:
            head = HeadModel(num_identity=num_identity)
        except HeadsplatError as err:
            raise avatar_damaged(f"num_identity does not fit the head model ({err})") from err
    return cls.from_state(tensors, meta, head)


def _metadata(header: dict[str, str] | None) -> dict:
    """The avatar's metadata: the JSON object stored as "headsplat" in the safetensors header."""
    text = (header or {}).get("headsplat")
    if text is None:
        raise avatar_damaged("its metadata (headsplat) is missing")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise avatar_damaged(f"its metadata (headsplat) is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise avatar_damaged("its metadata (headsplat) is not a JSON object")
    return meta


def _avatar_class(meta: dict, kind: type | None, path: Path) -> type:
    """The avatar class the metadata's "kind" names, if it is `kind` (when given)."""
    found = meta.get("kind")
    cls = AVATAR_KINDS.get(found) if isinstance(found, str) else None
    if cls is None or (kind is not None and cls is not kind):
        wanted = "a headsplat avatar" if kind is None else f"a {kind.__name__}"
        said = f"its kind is {found!r:.60}" if "kind" in meta else "its metadata has no kind"
        raise HeadsplatError(f"{path.name} is not {wanted} file ({said})")
    return cls

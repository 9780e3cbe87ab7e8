"""Avatar files: one .safetensors holding an avatar's tensors, with its metadata as JSON in the header.

Portrait avatars (Talk) and 3D head avatars (Avatar3D) share the format; the metadata's "kind" says
which one a file holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from models.errors import HeadsplatError
from models.gaussian_avatar import PortraitAvatar
from models.head_avatar import HeadAvatar
from models.head_model import HeadModel
from pipelines.files import atomic_output, require_file

AVATAR_KINDS = {"headsplat.portrait_avatar": PortraitAvatar, "headsplat.head_avatar": HeadAvatar}


def save_avatar(avatar: PortraitAvatar | HeadAvatar, path: str | os.PathLike) -> Path:
    """Write an avatar atomically."""
    tensors, meta = avatar.state()
    path = Path(path)
    with atomic_output(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"headsplat": json.dumps(meta)},
        )
    return path


def load_avatar(path: str | os.PathLike, head: HeadModel | None = None, kind: type | None = None):
    """Read an avatar written by `save_avatar`; `kind` (PortraitAvatar or HeadAvatar) insists on one."""
    path = require_file(path, "avatar file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("headsplat", "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as err:
        raise HeadsplatError(f"cannot read avatar {path.name}: {err}") from err
    cls = AVATAR_KINDS.get(meta.get("kind"))
    if cls is None or (kind is not None and cls is not kind):
        wanted = "a headsplat avatar" if kind is None else f"a {kind.__name__}"
        raise HeadsplatError(f"{path.name} is not {wanted} file")
    head = head or HeadModel(num_identity=int(meta.get("num_identity", 50)))
    return cls.from_state(tensors, meta, head)

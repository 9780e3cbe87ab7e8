"""Avatar files: one .safetensors holding the tensors, with the metadata as JSON in its header."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from models.errors import HeadsplatError
from models.gaussian_avatar import PortraitAvatar
from models.head_model import HeadModel
from pipelines.files import atomic_output, require_file


def save_portrait_avatar(avatar: PortraitAvatar, path: str | os.PathLike) -> Path:
    """Write a portrait avatar atomically."""
    tensors, meta = avatar.state()
    path = Path(path)
    with atomic_output(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"headsplat": json.dumps(meta)},
        )
    return path


def load_portrait_avatar(path: str | os.PathLike, head: HeadModel | None = None) -> PortraitAvatar:
    """Read a portrait avatar written by `save_portrait_avatar`."""
    path = require_file(path, "avatar file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("headsplat", "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as err:
        raise HeadsplatError(f"cannot read avatar {path.name}: {err}") from err
    return PortraitAvatar.from_state(
        tensors, meta, head or HeadModel(num_identity=int(meta.get("num_identity", 50)))
    )

"""Gaussian files on disk: the INRIA 3DGS .ply and the .splat web format, written atomically.

The formats themselves live in `renderers.ply` (bytes in, bytes out); this module puts them on disk the
way every headsplat output is written (`pipelines.files.atomic_output`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.files import atomic_output
from renderers import Gaussians, encode_ply, encode_splat, read_ply

__all__ = ["read_ply", "write_ply", "write_splat"]


def write_ply(path: str | os.PathLike, gaussians: Gaussians) -> Path:
    """Write `gaussians` as an INRIA 3DGS .ply (positions as given: Avatar3D passes metres), atomically."""
    data = encode_ply(gaussians)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_splat(path: str | os.PathLike, gaussians: Gaussians) -> Path:
    """Write `gaussians` as antimatter15's .splat, atomically."""
    data = encode_splat(gaussians)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)

"""File helpers every pipeline shares: atomic outputs and readable input checks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from models.errors import HeadsplatError


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """The path if it names a readable, non-empty file; a HeadsplatError saying what is wrong otherwise."""
    path = Path(path)
    if not path.exists():
        raise HeadsplatError(f"{what} not found: {path}")
    if not path.is_file():
        raise HeadsplatError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise HeadsplatError(f"{what} is empty: {path}")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed.

    A crash never leaves a half-written output. The folder must exist: a missing folder is the user's
    mistake, reported before any work is done.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise HeadsplatError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600), and some writers (safetensors' save_file) replace it with
        # another private file: outputs get the usual permissions (0666 minus the umask) just before the rename.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()

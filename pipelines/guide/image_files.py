"""Guide's image files: the output format from the name, atomic writes, reading a target image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from models.errors import HeadsplatError
from pipelines.files import atomic_output


def image_format(path: str | Path) -> str:
    """The PIL format name for an output image path, from its extension."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise HeadsplatError(f"cannot tell the image format of {path}: use a .png or .jpg name")
    return fmt


def save_image(image: Image.Image, path: str | Path) -> None:
    """Write an image atomically (format from the extension; the folder must exist; 0644 under umask 022)."""
    fmt = image_format(path)
    with atomic_output(Path(path)) as tmp:
        image.save(tmp, format=fmt)


def read_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB."""
    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as err:
        raise HeadsplatError(f"cannot read image {path}: {err}") from err

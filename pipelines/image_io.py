"""The project's one image loader and saver: any common file → RGB uint8 array, upright.

Handles RGB, RGBA/LA and palette transparency (composited on white), grayscale, 16-bit and float images,
CMYK and EXIF-rotated JPEGs; very large photos load at full resolution (the face tracker downscales for
detection and reports full-resolution coordinates). Unreadable or truncated files raise HeadsplatError.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import HeadsplatError
from pipelines.files import atomic_output, require_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif")
#: The one size limit: images above this many pixels are refused before decoding (a decompression bomb,
#: or a scan far beyond what a face needs). Below Pillow's own bomb error (2 × its MAX_IMAGE_PIXELS, 179 MP),
#: whose warning we silence, so this is the only limit a user meets.
MAX_PIXELS = 150_000_000
#: Photos are analysed and rendered at most this many pixels on their long side by default (a larger photo
#: is downscaled as it is decoded): a face needs far less, and the output video stays at a size players
#: and encoders handle. `--max-side` changes it.
DEFAULT_MAX_SIDE = 1920


def to_rgb_uint8(array: np.ndarray, background: int = 255) -> np.ndarray:
    """Any image array ([H, W], [H, W, 1|2|3|4]; uint8, uint16, bool or float in [0, 1]) → RGB uint8 [H, W, 3]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or min(array.shape[:2]) == 0:
        raise HeadsplatError(f"not an image array: shape {list(array.shape)}")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif array.dtype == bool:
        values = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float32)).clip(0.0, 1.0)
    elif np.issubdtype(array.dtype, np.integer):
        top = 255.0 if array.max(initial=0) <= 255 else 65535.0
        values = array.astype(np.float32).clip(0, top) / top
    else:
        raise HeadsplatError(f"unsupported image data type {array.dtype}")
    channels = values.shape[2]
    if channels in (2, 4):  # colour + alpha: composite over a plain background
        alpha = values[:, :, -1:]
        values = values[:, :, :-1] * alpha + (background / 255.0) * (1.0 - alpha)
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    if array.dtype == np.uint8 and channels == 3:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray((values * 255.0 + 0.5).astype(np.uint8))


def _pil_to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("RGB", "L", "RGBA", "LA"):
        return np.asarray(img)
    if mode == "P" or mode == "PA":
        return np.asarray(img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I":  # 32-bit integer; PNG 16-bit grayscale often decodes to this
        data = np.asarray(img)
        return data.clip(0, 65535).astype(np.uint16) if data.max(initial=0) > 255 else data.astype(np.uint8)
    if mode == "F":
        data = np.asarray(img, np.float32)
        top = float(data.max(initial=0.0))
        return data / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)
    if mode == "1":
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def load_image(path: str | os.PathLike, background: int = 255, max_side: int | None = None) -> np.ndarray:
    """Decode an image file to an upright RGB uint8 array [H, W, 3] (EXIF orientation applied).

    With `max_side`, a photo longer than that on either side is downscaled (aspect kept) while it is
    decoded: JPEGs decode straight at a reduced scale, so memory stays bounded for any accepted photo.
    """
    path = require_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise HeadsplatError(
                        f"{path.name} is {img.width}×{img.height} pixels, above the {MAX_PIXELS:,} limit; "
                        "downscale it first"
                    )
                scale = 1.0 if not max_side else min(1.0, max_side / max(img.width, img.height))
                if scale < 1.0:  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still at least the target size
                    img.draft(None, (max(1, int(img.width * scale)), max(1, int(img.height * scale))))
                img.load()  # decode now so truncated files fail here, not later
                img = ImageOps.exif_transpose(img)
                array = _pil_to_array(img)
    except HeadsplatError:
        raise
    except UnidentifiedImageError as err:
        raise HeadsplatError(f"cannot read {path.name}: not an image file Pillow understands") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise HeadsplatError(
            f"{path.name} is too large to decode safely ({err}); downscale it first"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise HeadsplatError(f"cannot read {path.name}: the file is damaged or truncated ({err})") from err
    rgb = to_rgb_uint8(array, background)
    if max_side and max(rgb.shape[:2]) > max_side:
        scale = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
    return rgb


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether the file name ends like an image (else it is treated as a video)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def save_image(image: np.ndarray, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write an RGB(A) uint8 image [H, W, 3|4] to .png/.jpg/.webp/... atomically."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise HeadsplatError(f"image outputs end in {', '.join(IMAGE_SUFFIXES)}; got {path.name!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        image = to_rgb_uint8(image)
    pil = Image.fromarray(image)
    if path.suffix.lower() in (".jpg", ".jpeg", ".jfif") and pil.mode == "RGBA":
        pil = pil.convert("RGB")
    with atomic_output(path) as tmp:
        pil.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], quality=quality)
    return path

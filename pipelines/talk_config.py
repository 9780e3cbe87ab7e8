"""Talk's config in a module that loads no torch, numba or renderer (importing pipelines.talk as a library
does), so the app builds its page at once. pipelines.talk re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.errors import HeadsplatError
from models.mouth_rest import SILENT_MOUTHS
from pipelines.config_cli import flag
from pipelines.drivers import GeneratorConfig
from pipelines.image_io import DEFAULT_MAX_SIDE


@dataclass
class TalkConfig(GeneratorConfig):
    """Everything `talk` needs; its flags, the app's defaults and batch keys are these fields (and the shared
    ones of `GeneratorConfig`: portrait, driver, motion controls, device)."""

    output: str = field(default="talk.mp4", metadata=flag("-o", "--output"))
    """Where the mp4 goes (written atomically)."""
    size: int | None = field(
        default=None, metadata=flag(default_help="the crop's size in the photo, at most 512")
    )
    """Side of the square face crop the avatar is rendered at, pixels (frames are pasted back at the crop's
    size in the photo, so a bigger render is only downsampled)."""
    crop: bool = False
    """Write the square face crop instead of pasting it back into the full photo."""
    max_side: int = DEFAULT_MAX_SIDE
    """A photo longer than this (pixels) on either side is downscaled first, so the video is at most this
    size and any photo takes bounded memory and time."""
    save_motion: str | None = None
    """Also write the motion that drove the video (.npz, .json or .csv)."""
    csv_translation: bool = False
    """With a .csv motion file: also write headsplat's HeadTranslationX/Y/Z columns (cm) after the 61
    values Live Link Face writes (importers made for the app's files may expect exactly those)."""
    cache_dir: str | None = None
    """Where built avatars are kept (default: $HEADSPLAT_CACHE or ~/.cache/headsplat); '' disables."""
    silent_mouth: str = field(default="auto", metadata=flag(choices=SILENT_MOUTHS))
    """How the mouth rests in silence: auto closes a photo's open mouth (parted lips showing more dark mouth
    than teeth) and keeps a closed or smiling one; photo always keeps the photo's mouth; closed always
    closes the lips. The video starts on the photo's own face either way."""

    def check(self) -> None:
        """Refuse bad values before any work: the shared ones, the render size and the photo limit."""
        super().check()
        if self.size is not None and not 64 <= self.size <= 2048:
            raise HeadsplatError(f"size must be between 64 and 2048 pixels; got {self.size}")
        if not 256 <= self.max_side <= 8192:
            raise HeadsplatError(f"--max-side must be between 256 and 8192 pixels; got {self.max_side}")

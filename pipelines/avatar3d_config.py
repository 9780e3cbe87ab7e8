"""Avatar3D's config and the constants the app reads to lay out its tab, in a module that loads no torch,
numba or renderer (importing pipelines.avatar3d as a library does), so the app builds its page at once.
pipelines.avatar3d re-exports all of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from models.errors import HeadsplatError
from pipelines.config_cli import flag, key_only
from pipelines.drivers import GeneratorConfig

CAMERAS = ("front", "orbit")

# gsplat.js, the splat viewer of Gradio's gr.Model3D (gradio 6's Canvas3DGS), ignores camera_position and
# always starts from the same orbit camera; the numbers below are its defaults, read from that script.
#: Orbit angles of its camera, radians: alpha about the y axis, beta above the orbit's plane.
SPLAT_VIEWER_ORBIT = (0.5, 0.5)
#: Distance of its camera from the orbit target (the origin), in the file's units.
SPLAT_VIEWER_RADIUS = 5.0
#: Focal length of its camera, CSS pixels, the same whatever the canvas's size.
SPLAT_VIEWER_FOCAL_PX = 1132.0
#: Height of the app's 3D viewer, CSS pixels (its canvas is this tall, less the block's border).
VIEWER_HEIGHT = 560


@dataclass
class Avatar3DConfig(GeneratorConfig):
    """Everything `avatar3d` needs; its flags, the app's defaults and batch keys are these fields (and the
    shared ones of `GeneratorConfig`: portrait, driver, motion controls, device)."""

    output: str = field(default=".", metadata=flag("-o", "--output"))
    """Existing folder the files go into."""
    avatar: str | None = None
    """A built avatar (.safetensors) to reuse instead of building one from the portrait."""
    camera: str = field(default="front", metadata=flag(choices=CAMERAS))
    """Camera of the talking video: front (still, in front of the face) or orbit (one turn per 8 s)."""
    num_gaussians: int = 100_000
    """Surface Gaussians of the head (the mouth interior adds about 19k)."""
    size: int = 512
    """Side of the square videos, pixels."""
    turntable_seconds: float = 4.0
    """Length of the turntable (one full turn), seconds; 0 skips it."""
    background: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0), metadata=key_only())
    """RGB in [0, 1] behind the head in the videos."""

    def check(self) -> None:
        """Refuse bad values before any work: the shared ones, the camera and the sizes."""
        super().check()
        if self.camera not in CAMERAS:
            raise HeadsplatError(f"--camera must be one of {', '.join(CAMERAS)}; got {self.camera!r}")
        if not 64 <= self.size <= 2048:
            raise HeadsplatError(f"--size must be between 64 and 2048 pixels; got {self.size}")
        if not 5_000 <= self.num_gaussians <= 2_000_000:
            raise HeadsplatError(
                f"--num-gaussians must be between 5000 and 2000000; got {self.num_gaussians}"
            )
        if not (math.isfinite(self.turntable_seconds) and 0 <= self.turntable_seconds <= 600):
            raise HeadsplatError(f"--turntable-seconds must be from 0 to 600; got {self.turntable_seconds}")

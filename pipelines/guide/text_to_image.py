"""One guided image from a GuideConfig: the CLI's default command and the app's Guide tab."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch
from PIL import Image

from models.attention_guidance import MODES, HeadSet
from models.errors import HeadsplatError
from pipelines.config_cli import flag
from pipelines.guide.heads import load_heads
from pipelines.guide.loading import DTYPES, load_pipeline
from pipelines.guide.sampling import SIZE_MULTIPLE, HeadGuidancePipeline, check_settings


def parse_range(text: str) -> tuple[float, float]:
    """'0,0.5' -> (0.0, 0.5) (the --guidance-range flag)."""
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END fractions like 0,0.5, got {text!r}") from None
    return start, end


@dataclass
class GuideConfig:
    """One guided image: shared by the CLI (each field is a flag) and the app."""

    prompt: str
    """Text prompt."""
    model: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    """Hugging Face id (from the local cache), local diffusers folder, or tiny-sd3 / tiny-flux."""
    heads: str = field(default="", metadata=flag(default_help="none"))
    """Heads to perturb: 'L:H,L:H', 'L:*' for a layer, or a JSON file (e.g. from the search)."""
    scale: float | None = None
    """Perturbation guidance scale w (None: 3 for SD3, 8 for FLUX; 0 turns guidance off)."""
    soft: float = 1.0
    """SoftPAG strength u in [0, 1]: 1 = identity attention, 0 = no change (paper: ~0.5 after search)."""
    cfg: float | None = None
    """CFG scale for SD3 / distilled guidance for FLUX (None: 7.0 / 3.5)."""
    true_cfg: float = 1.0
    """FLUX only: true CFG scale, used with a negative prompt when > 1."""
    steps: int | None = None
    """Denoising steps (None: 20 for SD3, 15 for FLUX)."""
    seed: int = 0
    """Random seed of the initial noise."""
    mode: str = field(default="joint", metadata=flag(choices=MODES))
    """'joint': identity over the whole text+image sequence; 'image': image-to-image only (diffusers PAG)."""
    height: int | None = None
    """Image height in pixels, a multiple of 16 (None: the model default)."""
    width: int | None = None
    """Image width in pixels, a multiple of 16 (None: the model default)."""
    negative_prompt: str | None = None
    """Negative prompt for CFG."""
    guidance_range: tuple[float, float] = field(
        default=(0.0, 1.0), metadata=flag(parse=parse_range, metavar="START,END", default_help="0,1")
    )
    """Apply head guidance on steps whose fraction i/steps lies in [start, end)."""
    device: str = "auto"
    """auto, cpu or cuda (or cuda:N)."""
    dtype: str = field(default="auto", metadata=flag(choices=("auto", *DTYPES)))
    """auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."""
    drop_t5: bool = field(default=False, metadata=flag("--no-t5"))
    """SD3: load without the T5-XXL text encoder (4.7B parameters)."""
    output: str = field(default="guide.png", metadata=flag("-o", "--output"))
    """Output image path (.png/.jpg)."""

    def check(self) -> None:
        """A HeadsplatError for the first setting no sampling can use, before any model loads."""
        check_settings(
            scale=self.scale,
            strength=self.soft,
            mode=self.mode,
            guidance_range=self.guidance_range,
            steps=self.steps,
            cfg=self.cfg,
            true_cfg=self.true_cfg,
            height=self.height,
            width=self.width,
            size_multiple=SIZE_MULTIPLE,
        )
        if not 0 <= self.seed < 2**64:  # torch's generator takes 64 bits
            raise HeadsplatError(f"--seed must be 0 to 2**64 - 1, got {self.seed}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise HeadsplatError(f"unknown --dtype {self.dtype!r}: use auto, {', '.join(DTYPES)}")


def generate(config: GuideConfig, pipeline: HeadGuidancePipeline | None = None) -> Image.Image:
    """Sample one image for a GuideConfig (loading the model unless a pipeline is given)."""
    config.check()
    heads = load_heads(config.heads) if config.heads else HeadSet()  # a bad spec fails before loading
    pipeline = pipeline or load_pipeline(config.model, config.device, config.dtype, config.drop_t5)
    return pipeline(
        config.prompt,
        negative_prompt=config.negative_prompt,
        pag_heads=heads,
        pag_scale=config.scale,
        pag_strength=config.soft,
        pag_mode=config.mode,
        pag_range=config.guidance_range,
        height=config.height,
        width=config.width,
        num_inference_steps=config.steps,
        guidance_scale=config.cfg,
        true_cfg_scale=config.true_cfg,
        generator=torch.Generator("cpu").manual_seed(config.seed),
    ).images[0]

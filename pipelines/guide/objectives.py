"""Objectives for the head search: callables (PIL image, prompt) -> float, higher is better.

Built in: colorfulness, sharpness, target:IMAGE (closeness to a reference image) and clip:MODEL[,PROCESSOR],
a CLIP-family scorer loaded with transformers from a local folder or the Hugging Face cache, e.g.
clip:openai/clip-vit-large-patch14 (CLIPScore x 100) or
clip:yuvalkirstain/PickScore_v1,laion/CLIP-ViT-H-14-laion2B-s32B-b79K (PickScore). From Python any
callable works: search_heads(pipeline, config, objective=my_scorer, state=...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.errors import HeadsplatError
from pipelines.guide.image_files import read_image
from pipelines.guide.loading import local_weights

Objective = Callable[[Image.Image, str], float]


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def colorfulness(image: Image.Image, prompt: str = "") -> float:
    """Hasler & Suesstrunk (2003) colourfulness M = sigma_rgyb + 0.3 mu_rgyb (no reference, no weights)."""
    rgb = _rgb(image)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def sharpness(image: Image.Image, prompt: str = "") -> float:
    """Variance of the Laplacian of the grey image (Pech-Pacheco et al. 2000), a no-reference focus score."""
    import cv2

    grey = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@dataclass
class TargetSimilarity:
    """Negative mean squared RGB distance (in [0, 1] units) to a target image: 0 is a perfect match."""

    target: Image.Image
    """The image to steer towards; resized to each scored image's size."""

    def __call__(self, image: Image.Image, prompt: str = "") -> float:
        target = self.target.convert("RGB")
        if target.size != image.size:
            target = target.resize(image.size, Image.Resampling.BICUBIC)
        return -float(np.mean(((_rgb(image) - _rgb(target)) / 255.0) ** 2))


class ClipScore:
    """CLIP-family text-image score logit_scale.exp() * cos(image, text): CLIPScore x 100 for OpenAI
    CLIP, and exactly PickScore's formula with PickScore_v1 weights (its processor is
    laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
    Weights come from a local folder or the Hugging Face cache; nothing is downloaded."""

    def __init__(self, model: str, processor: str | None = None, device: str = "cpu"):
        from transformers import AutoProcessor, CLIPModel

        # Both before either loads: a missing processor fails as fast as a missing model.
        model_folder = local_weights(model, "CLIP scorer")
        processor_folder = local_weights(processor, "CLIP processor") if processor else model_folder
        try:
            self.model = CLIPModel.from_pretrained(model_folder).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(processor_folder)
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HeadsplatError(
                f"could not load CLIP scorer {model!r}: {reason} (give a folder or Hub id of CLIP weights "
                f"with their processor)"
            ) from err
        self.device = device

    @torch.no_grad()
    def __call__(self, image: Image.Image, prompt: str) -> float:
        inputs = self.processor(
            text=[prompt], images=[image.convert("RGB")], return_tensors="pt", padding=True, truncation=True
        ).to(self.device)
        out = self.model(**inputs)
        image_embed = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        text_embed = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return float(self.model.logit_scale.exp() * (image_embed * text_embed).sum())


def make_objective(spec: str, device: str = "cpu") -> Objective:
    """'colorfulness', 'sharpness', 'target:IMAGE', 'clip:MODEL[,PROCESSOR]' (also PickScore weights)."""
    name, _, arg = spec.partition(":")
    if name == "colorfulness" and not arg:
        return colorfulness
    if name == "sharpness" and not arg:
        return sharpness
    if name == "target" and arg:
        return TargetSimilarity(read_image(arg))
    if name == "clip" and arg:
        model, _, processor = arg.partition(",")
        return ClipScore(model, processor or None, device=device)
    raise HeadsplatError(
        f"unknown objective {spec!r}: use colorfulness, sharpness, target:IMAGE or clip:MODEL[,PROCESSOR]"
    )

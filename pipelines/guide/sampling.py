"""The guided sampler: a stock SD3 or FLUX pipeline plus head-level perturbed-attention guidance.

One denoising loop serves both families; what differs (conditioning, CFG vs distilled guidance, latent
packing) comes from pipelines.guide.families. Each step calls the transformer on [uncond, cond,
perturbed] (or [cond, perturbed]) and combines e = e_u + s (e_c - e_u) + w (e_c - e_perturbed)
(arXiv 2506.10978).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models.attention_guidance import (
    MODES,
    AttentionLayout,
    HeadSet,
    attention_layout,
    combine_guidance,
    perturbed_attention,
)
from models.errors import HeadsplatError
from pipelines.guide.families import SD3, Flux, Plan, Request, TextConditioning, family_of

# Paper settings (arXiv 2506.10978): w = 3 with 20 steps on SD3-medium, w = 8 with 15 steps on FLUX.1-dev.
FAMILY_DEFAULTS = {family.name: family.defaults for family in (SD3, Flux)}
MAX_STEPS = 1000
"""The most denoising steps a call takes: a bound that turns a typo (20000) into an error, not hours of
sampling; the paper samples 15-20."""
SIZE_MULTIPLE = 16
"""Image sides a GuideConfig or SearchConfig may ask for are multiples of 16 pixels, what every released SD3
and FLUX needs (an 8x VAE, 2x2 latent patches); checked before a model loads. The tiny models are held to it
too, so that settings tried on them work on the real ones. The sampler checks the loaded model's own factor."""


def check_settings(
    *,
    scale: float | None,
    strength: float,
    mode: str,
    guidance_range: tuple[float, float],
    steps: int | None,
    cfg: float | None,
    true_cfg: float,
    height: int | None,
    width: int | None,
    size_multiple: int,
) -> None:
    """A HeadsplatError for the first sampling setting no model can use, named by its flag; None is the
    family default. Image sides must be positive multiples of `size_multiple` pixels."""
    for name, value in (("--scale", scale), ("--cfg", cfg), ("--true-cfg", true_cfg)):
        if value is not None and not math.isfinite(value):
            raise HeadsplatError(f"{name} must be a finite number, got {value}")
    if not 0.0 <= strength <= 1.0:  # NaN fails too
        raise HeadsplatError(f"--soft (SoftPAG strength) must be in [0, 1], got {strength}")
    if mode not in MODES:
        raise HeadsplatError(f"unknown --mode {mode!r}: use one of {', '.join(MODES)}")
    start, end = guidance_range
    if not 0.0 <= start <= end <= 1.0:
        raise HeadsplatError(f"--guidance-range {start},{end} must satisfy 0 <= start <= end <= 1")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise HeadsplatError(f"--steps must be 1-{MAX_STEPS}, got {steps}")
    for name, side in (("--height", height), ("--width", width)):
        if side is not None and (side < 1 or side % size_multiple):
            nearest = max(size_multiple, round(side / size_multiple) * size_multiple)
            raise HeadsplatError(
                f"{name} must be a positive multiple of {size_multiple} pixels (the VAE's downsampling times "
                f"the latent patch), got {side}: try {nearest}"
            )


@dataclass
class GuideOutput:
    """What HeadGuidancePipeline returns (diffusers' output shape: .images)."""

    images: Any
    """PIL images, a [B, H, W, 3] array (output_type 'np') or latents (output_type 'latent')."""


@dataclass(frozen=True)
class HeadGuidance:
    """The perturbed pass of one sampling call."""

    heads: HeadSet
    """Heads whose attention is perturbed."""
    scale: float
    """w: how far the prediction moves away from the perturbed one."""
    strength: float
    """SoftPAG u in [0, 1]: 1 replaces the heads' attention with identity, 0 leaves it."""
    mode: str
    """'joint' (the whole text+image sequence) or 'image' (image-to-image only, diffusers' PAG)."""
    steps: tuple[float, float]
    """Guide the steps whose fraction i/N lies in [start, end)."""

    def perturbs(self, step: int, num_steps: int) -> bool:
        """Whether step `step` of `num_steps` runs the perturbed pass."""
        if self.scale == 0.0 or len(self.heads) == 0 or self.strength <= 0.0:
            return False
        start, end = self.steps
        return start <= step / num_steps < end


class HeadGuidancePipeline:
    """A stock StableDiffusion3Pipeline or FluxPipeline plus head-level perturbed-attention guidance."""

    def __init__(self, pipe, max_sequence_length: int | None = None):
        """Wrap a stock pipeline; max_sequence_length is the T5 token count used when a call gives none
        (None: the stock 256 for SD3, 512 for FLUX)."""
        self.parts = family_of(pipe)
        self.family = self.parts.name
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self.layout: AttentionLayout = attention_layout(pipe.transformer)

    @property
    def device(self) -> torch.device:
        """Where the pipeline runs."""
        return self.pipe._execution_device

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        *,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        pag_heads: HeadSet | str | None = None,
        pag_scale: float | None = None,
        pag_strength: float = 1.0,
        pag_mode: str = "joint",
        pag_range: tuple[float, float] = (0.0, 1.0),
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        true_cfg_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        max_sequence_length: int | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
    ) -> GuideOutput:
        """Sample images; the perturbed pass (heads `pag_heads` at SoftPAG strength u = `pag_strength`)
        adds pag_scale * (e_c - e_perturbed) on the steps whose fraction i/N lies in `pag_range`.

        guidance_scale is SD3's CFG scale and FLUX's distilled guidance embedding; true_cfg_scale is
        FLUX's real CFG (with a negative prompt). None picks the family default (paper settings).
        Precomputed text embeddings (diffusers' names) may replace the prompts.
        """
        defaults = self.parts.defaults
        pipe = self.pipe
        # None is the family default; 0 (steps, sizes) is an error, not the default.
        pag_scale = defaults["pag_scale"] if pag_scale is None else float(pag_scale)
        if num_inference_steps is None:
            num_inference_steps = defaults["num_inference_steps"]
        guidance_scale = defaults["guidance_scale"] if guidance_scale is None else float(guidance_scale)
        default_side = pipe.default_sample_size * pipe.vae_scale_factor
        height = default_side if height is None else height
        width = default_side if width is None else width
        heads = HeadSet.parse(pag_heads) if isinstance(pag_heads, str) else (pag_heads or HeadSet())
        heads.resolve(self.layout)  # validate before any work
        check_settings(
            scale=pag_scale,
            strength=pag_strength,
            mode=pag_mode,
            guidance_range=pag_range,
            steps=num_inference_steps,
            cfg=guidance_scale,
            true_cfg=true_cfg_scale,
            height=height,
            width=width,
            size_multiple=self.parts.size_multiple,
        )
        guidance = HeadGuidance(heads, pag_scale, pag_strength, pag_mode, pag_range)
        request = Request(
            prompt=prompt,
            negative_prompt=negative_prompt,
            embeds=dict(
                prompt_embeds=prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            ),
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            true_cfg_scale=true_cfg_scale,
            generator=generator,
            latents=latents,
            max_sequence_length=max_sequence_length or self.max_sequence_length or self.parts.text_tokens,
        )
        try:
            images = self._sample(request, guidance, output_type, callback_on_step_end)
        finally:
            pipe.maybe_free_model_hooks()
        return GuideOutput(images=images)

    def _sample(self, request: Request, guidance: HeadGuidance, output_type: str, callback_on_step_end):
        pipe, family = self.pipe, self.parts
        family.check_inputs(request)
        batch = request.batch
        plan = family.plan(request)
        latents = plan.latents
        for i, t in enumerate(pipe.progress_bar(plan.timesteps)):
            perturb = guidance.perturbs(i, plan.num_steps)
            noise_pred = self._predict(plan, latents, t, guidance, perturb, batch)
            latents_dtype = latents.dtype
            latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if latents.dtype != latents_dtype:
                latents = latents.to(latents_dtype)
            if callback_on_step_end is not None:
                latents = callback_on_step_end(pipe, i, t, {"latents": latents}).get("latents", latents)

        if output_type == "latent":
            return latents
        latents = family.unpack(latents, request.height, request.width)
        latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type)

    def _predict(
        self,
        plan: Plan,
        latents: torch.Tensor,
        t: torch.Tensor,
        guidance: HeadGuidance,
        perturb: bool,
        batch: int,
    ) -> torch.Tensor:
        """One step's guided prediction, in the transformer calls the stock pipeline makes: SD3 stacks
        [uncond]? + [cond] + [perturbed]? into one; FLUX runs [cond] + [perturbed]? and then [uncond]."""
        with_uncond = plan.uncond is not None and self.parts.batches_uncond
        conditions = ([plan.uncond] if with_uncond else []) + [plan.cond] * (2 if perturb else 1)
        predictions = list(self._call_transformer(plan, latents, t, conditions, guidance, perturb, batch))
        perturbed = predictions.pop() if perturb else None
        uncond = predictions.pop(0) if with_uncond else None
        if plan.uncond is not None and not with_uncond:
            (uncond,) = self._call_transformer(plan, latents, t, [plan.uncond], guidance, False, batch)
        return combine_guidance(predictions[0], uncond, perturbed, plan.cfg_scale, guidance.scale)

    def _call_transformer(
        self,
        plan: Plan,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditions: list[TextConditioning],
        guidance: HeadGuidance,
        perturb_last: bool,
        batch: int,
    ) -> tuple[torch.Tensor, ...]:
        """One transformer call on a copy of the latents per condition; with perturb_last the last copy's
        `batch` rows see the perturbed heads. Returns one prediction per condition."""
        model_input = torch.cat([latents] * len(conditions))
        with perturbed_attention(
            self.pipe.transformer,
            guidance.heads if perturb_last else HeadSet(),
            guidance.strength,
            guidance.mode,
            rows=slice((len(conditions) - 1) * batch, None),
        ):
            prediction = self.parts.forward(plan, model_input, t, conditions)
        return prediction.chunk(len(conditions))

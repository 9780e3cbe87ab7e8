"""What differs between SD3 and FLUX around the one denoising loop (pipelines.guide.sampling).

Each family follows its stock diffusers pipeline (StableDiffusion3Pipeline.__call__ and
FluxPipeline.__call__) step by step, so head guidance at w = 0 reproduces the stock images exactly:

- conditioning: SD3 encodes the negative prompt whenever it does CFG; FLUX encodes text positions too,
  and a negative prompt only for true CFG;
- guidance: SD3's guidance_scale is CFG, batched with the conditional pass in one transformer call;
  FLUX's is a distilled guidance embedding, and its true CFG is a transformer call of its own;
- latents: SD3 denoises [B, C, h, w]; FLUX packs 2x2 patches into tokens and unpacks them for the VAE.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch

from models.errors import HeadsplatError


@dataclass
class TextConditioning:
    """One prompt batch's text input to the transformer."""

    embeds: torch.Tensor  # [B, S, C] text token embeddings
    pooled: torch.Tensor  # [B, P] pooled text embedding
    text_ids: torch.Tensor | None = None  # [S, 3] FLUX text positions; None for SD3


@dataclass
class Request:
    """One sampling call's settings, the family defaults filled in."""

    prompt: str | list[str] | None
    negative_prompt: str | list[str] | None
    embeds: dict
    """diffusers' precomputed text embeddings by their argument names (None where not given)."""
    height: int  # pixels
    width: int  # pixels
    num_inference_steps: int
    guidance_scale: float  # SD3's CFG scale; FLUX's distilled guidance
    true_cfg_scale: float  # FLUX's CFG scale with a negative prompt
    generator: torch.Generator | list[torch.Generator] | None
    latents: torch.Tensor | None  # initial noise; None: drawn from the generator
    max_sequence_length: int  # T5 tokens per prompt

    @property
    def batch(self) -> int:
        """Prompts per call (read after the inputs are checked: without prompts it needs embeddings)."""
        if self.prompt is None:
            return self.embeds["prompt_embeds"].shape[0]
        return 1 if isinstance(self.prompt, str) else len(self.prompt)


@dataclass
class Plan:
    """A family's setup of one sampling call: what the shared loop denoises, when, and with what text."""

    latents: torch.Tensor  # SD3 [B, C, h, w]; FLUX packed [B, h*w/4, 4C]
    timesteps: torch.Tensor  # [N]
    num_steps: int
    cond: TextConditioning
    uncond: TextConditioning | None  # None: no CFG
    cfg_scale: float  # s in e_u + s (e_c - e_u): SD3's guidance_scale, FLUX's true_cfg_scale
    image_ids: torch.Tensor | None = None  # [h*w/4, 3] FLUX image positions; None for SD3
    embedded_guidance: float | None = None  # FLUX.1-dev's distilled guidance; None for SD3 and schnell


class Family(abc.ABC):
    """The pieces of one model family that the shared loop calls (SD3 and Flux fill in the abstract ones)."""

    name: str
    defaults: dict
    """The paper's settings (arXiv 2506.10978): pag_scale, num_inference_steps, guidance_scale."""
    text_tokens: int
    """T5 tokens per prompt when neither the call nor the pipeline gives a number (the stock default)."""
    batches_uncond: bool
    """Whether the unconditional pass shares the conditional pass's transformer call."""

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    @abc.abstractmethod
    def size_multiple(self) -> int:
        """Image sides must be multiples of this many pixels: the VAE's downsampling times the latent patch."""

    def check_inputs(self, request: Request) -> None:
        """The stock pipeline's input checks, their first line as a user error."""
        try:
            self._stock_check_inputs(
                request.prompt,
                request.height,
                request.width,
                negative_prompt=request.negative_prompt,
                max_sequence_length=request.max_sequence_length,
                **request.embeds,
            )
        except ValueError as err:
            raise HeadsplatError(str(err).splitlines()[0]) from err

    @abc.abstractmethod
    def _stock_check_inputs(self, prompt, height: int, width: int, **kwargs) -> None:
        """The stock diffusers pipeline's own check_inputs."""

    @abc.abstractmethod
    def plan(self, request: Request) -> Plan:
        """Encode the prompts, prepare the latents and the timesteps, as the stock pipeline does."""

    @abc.abstractmethod
    def forward(
        self, plan: Plan, model_input: torch.Tensor, t: torch.Tensor, conditions: list[TextConditioning]
    ) -> torch.Tensor:
        """One transformer call: model_input holds one copy of the latents per entry of `conditions`."""

    def unpack(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The denoised latents as the VAE reads them, [B, C, h, w]."""
        return latents


class SD3(Family):
    name = "sd3"
    defaults = {"pag_scale": 3.0, "num_inference_steps": 20, "guidance_scale": 7.0}
    text_tokens = 256
    batches_uncond = True

    @property
    def size_multiple(self) -> int:
        # As StableDiffusion3Pipeline.check_inputs: 8 x 2 = 16 for every released SD3.
        return self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size

    def _stock_check_inputs(self, prompt, height, width, **kwargs):
        self.pipe.check_inputs(prompt, None, None, height, width, **kwargs)  # no prompt_2, prompt_3

    def plan(self, request: Request) -> Plan:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
            retrieve_timesteps,
        )

        pipe = self.pipe
        device = pipe._execution_device
        do_cfg = request.guidance_scale > 1
        prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=request.prompt,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=do_cfg,
            device=device,
            max_sequence_length=request.max_sequence_length,
            **request.embeds,
        )
        latents = pipe.prepare_latents(
            request.batch,
            pipe.transformer.config.in_channels,
            request.height,
            request.width,
            prompt_embeds.dtype,
            device,
            request.generator,
            request.latents,
        )
        scheduler_kwargs = {}
        if pipe.scheduler.config.get("use_dynamic_shifting", None):
            _, _, h, w = latents.shape
            patch = pipe.transformer.config.patch_size
            scheduler_kwargs["mu"] = calculate_shift(
                (h // patch) * (w // patch),
                pipe.scheduler.config.get("base_image_seq_len", 256),
                pipe.scheduler.config.get("max_image_seq_len", 4096),
                pipe.scheduler.config.get("base_shift", 0.5),
                pipe.scheduler.config.get("max_shift", 1.16),
            )
        timesteps, num_steps = retrieve_timesteps(
            pipe.scheduler, request.num_inference_steps, device, **scheduler_kwargs
        )
        return Plan(
            latents=latents,
            timesteps=timesteps,
            num_steps=num_steps,
            cond=TextConditioning(prompt_embeds, pooled),
            uncond=TextConditioning(negative_embeds, negative_pooled) if do_cfg else None,
            cfg_scale=request.guidance_scale,
        )

    def forward(self, plan, model_input, t, conditions):
        return self.pipe.transformer(
            hidden_states=model_input,
            timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=torch.cat([c.embeds for c in conditions]),
            pooled_projections=torch.cat([c.pooled for c in conditions]),
            return_dict=False,
        )[0]


class Flux(Family):
    name = "flux"
    defaults = {"pag_scale": 8.0, "num_inference_steps": 15, "guidance_scale": 3.5}
    text_tokens = 512
    batches_uncond = False

    @property
    def size_multiple(self) -> int:
        # Latents are packed in 2x2 patches (FluxPipeline._pack_latents): 8 x 2 = 16 for every released FLUX.
        # The stock pipeline only warns and rounds the size down; here it is refused like SD3's.
        return self.pipe.vae_scale_factor * 2

    def _stock_check_inputs(self, prompt, height, width, **kwargs):
        self.pipe.check_inputs(prompt, None, height, width, **kwargs)  # no prompt_2

    def _encode(self, request: Request, negative: bool) -> TextConditioning:
        prefix = "negative_" if negative else ""
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=request.negative_prompt if negative else request.prompt,
            prompt_2=None,
            prompt_embeds=request.embeds[f"{prefix}prompt_embeds"],
            pooled_prompt_embeds=request.embeds[f"{prefix}pooled_prompt_embeds"],
            device=self.pipe._execution_device,
            max_sequence_length=request.max_sequence_length,
        )
        return TextConditioning(embeds, pooled, text_ids)

    def plan(self, request: Request) -> Plan:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        pipe = self.pipe
        device = pipe._execution_device
        has_negative = request.negative_prompt is not None or (
            request.embeds["negative_prompt_embeds"] is not None
            and request.embeds["negative_pooled_prompt_embeds"] is not None
        )
        cond = self._encode(request, negative=False)
        uncond = None
        if request.true_cfg_scale > 1 and has_negative:  # true CFG; otherwise only distilled guidance
            uncond = self._encode(request, negative=True)
        latents, image_ids = pipe.prepare_latents(
            request.batch,
            pipe.transformer.config.in_channels // 4,
            request.height,
            request.width,
            cond.embeds.dtype,
            device,
            request.generator,
            request.latents,
        )
        steps = request.num_inference_steps
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if getattr(pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            latents.shape[1],
            pipe.scheduler.config.get("base_image_seq_len", 256),
            pipe.scheduler.config.get("max_image_seq_len", 4096),
            pipe.scheduler.config.get("base_shift", 0.5),
            pipe.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, num_steps = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, mu=mu)
        pipe.scheduler.set_begin_index(0)
        return Plan(
            latents=latents,
            timesteps=timesteps,
            num_steps=num_steps,
            cond=cond,
            uncond=uncond,
            cfg_scale=request.true_cfg_scale,
            image_ids=image_ids,
            embedded_guidance=request.guidance_scale if pipe.transformer.config.guidance_embeds else None,
        )

    def forward(self, plan, model_input, t, conditions):
        copies = model_input.shape[0]
        guidance = None
        if plan.embedded_guidance is not None:
            guidance = torch.full(
                [1], plan.embedded_guidance, device=self.pipe._execution_device, dtype=torch.float32
            )
            guidance = guidance.expand(copies)
        return self.pipe.transformer(
            hidden_states=model_input,
            timestep=t.expand(copies).to(model_input.dtype) / 1000,
            guidance=guidance,
            pooled_projections=torch.cat([c.pooled for c in conditions]),
            encoder_hidden_states=torch.cat([c.embeds for c in conditions]),
            txt_ids=conditions[0].text_ids,  # one call stacks one prompt's copies: the same positions
            img_ids=plan.image_ids,
            joint_attention_kwargs={},
            return_dict=False,
        )[0]

    def unpack(self, latents, height, width):
        return self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)


def family_of(pipe) -> Family:
    """The family pieces for a stock StableDiffusion3Pipeline or FluxPipeline."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    if isinstance(pipe, StableDiffusion3Pipeline):
        return SD3(pipe)
    if isinstance(pipe, FluxPipeline):
        return Flux(pipe)
    raise HeadsplatError(
        f"head guidance needs a StableDiffusion3Pipeline or FluxPipeline, got {type(pipe).__name__}: "
        f"use an SD3 or FLUX model"
    )

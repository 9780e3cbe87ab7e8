"""Guide: SD3/FLUX images steered by head-level perturbed-attention guidance (head-PAG, SoftPAG, HeadHunter).

    python -m pipelines.guide --prompt "a portrait" --model stabilityai/stable-diffusion-3-medium-diffusers \\
        --heads "12:3,12:7" --scale 3 --soft 0.5 --cfg 4 -o out.png
    python -m pipelines.guide search --prompts-file prompts.txt --model tiny-sd3 --objective sharpness \\
        -k 1 --rounds 2 -o heads.json

Method: arXiv 2506.10978. The stock diffusers pipeline (StableDiffusion3Pipeline or FluxPipeline)
encodes prompts, prepares latents and timesteps and decodes; the denoising loop here calls its
transformer once per step on [uncond, cond, perturbed] (or [cond, perturbed]) and combines
e = e_u + s (e_c - e_u) + w (e_c - e_perturbed).

Objectives for the search are callables (PIL image, prompt) -> float, higher is better: built in are
colorfulness, sharpness, target:IMAGE (closeness to a reference image) and clip:MODEL[,PROCESSOR], a
CLIP-family scorer loaded with transformers from a local folder or the Hugging Face cache, e.g.
clip:openai/clip-vit-large-patch14 (CLIPScore x 100) or
clip:yuvalkirstain/PickScore_v1,laion/CLIP-ViT-H-14-laion2B-s32B-b79K (PickScore). From Python any
callable works: search_heads(pipeline, config, objective=my_scorer, state=...).
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.attention_guidance import (
    MODES,
    AttentionLayout,
    HeadSet,
    attention_layout,
    combine_guidance,
    perturbed_attention,
)
from models.errors import HeadsplatError
from pipelines.cli import check_output, run_cli
from pipelines.files import atomic_output

TINY_MODELS = ("tiny-sd3", "tiny-flux")
TINY_TEXT_TOKENS = 16
"""T5 tokens per prompt for the tiny models (the stock 256/512 would dwarf their 64 image tokens)."""

# Paper settings (arXiv 2506.10978): w = 3 with 20 steps on SD3-medium, w = 8 with 15 steps on FLUX.1-dev.
FAMILY_DEFAULTS = {
    "sd3": {"pag_scale": 3.0, "num_inference_steps": 20, "guidance_scale": 7.0},
    "flux": {"pag_scale": 8.0, "num_inference_steps": 15, "guidance_scale": 3.5},
}


# ----------------------------------------------------------------------------------------------------
# Tiny offline models (tests, the CLI's --model tiny-*, the app's demo mode)
# ----------------------------------------------------------------------------------------------------


def _tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    # No merges: every word splits into single characters, so any lowercase text has tokens.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -3.0) for ch in string.ascii_lowercase + string.digits]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def build_tiny_pipeline(name: str, seed: int = 0):
    """A tiny random SD3 ('tiny-sd3': 3 layers x 4 heads) or FLUX ('tiny-flux': 2 double + 2 single
    blocks x 2 heads) pipeline built in code from diffusers' test configs: no download, 16x16 images."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    if name not in TINY_MODELS:
        raise HeadsplatError(f"unknown tiny model {name!r}: use one of {', '.join(TINY_MODELS)}")
    clip_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=80,
        hidden_act="gelu",
        projection_dim=32,
    )
    tokenizer = _tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-sd3":
            transformer = SD3Transformer2DModel(
                sample_size=32,
                patch_size=1,
                in_channels=4,
                num_layers=3,
                attention_head_dim=8,
                num_attention_heads=4,
                caption_projection_dim=32,
                joint_attention_dim=32,
                pooled_projection_dim=64,
                out_channels=4,
            )
            vae = AutoencoderKL(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                block_out_channels=(4,),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            )
            pipe = StableDiffusion3Pipeline(
                transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(),
                vae=vae,
                text_encoder=CLIPTextModelWithProjection(clip_config),
                tokenizer=tokenizer,
                text_encoder_2=CLIPTextModelWithProjection(clip_config),
                tokenizer_2=tokenizer,
                text_encoder_3=None,
                tokenizer_3=None,
            )
        else:
            transformer = FluxTransformer2DModel(
                patch_size=1,
                in_channels=4,
                num_layers=2,
                num_single_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=32,
                pooled_projection_dim=32,
                axes_dims_rope=[4, 4, 8],
                guidance_embeds=True,
            )
            vae = AutoencoderKL(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                block_out_channels=(4,),
                layers_per_block=1,
                latent_channels=1,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            )
            t5 = T5EncoderModel(
                T5Config(
                    vocab_size=48,
                    d_model=32,
                    d_kv=8,
                    d_ff=37,
                    num_layers=2,
                    num_heads=4,
                    pad_token_id=0,
                    eos_token_id=1,
                    decoder_start_token_id=0,
                )
            )
            pipe = FluxPipeline(
                transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(),
                vae=vae,
                text_encoder=CLIPTextModel(clip_config),
                tokenizer=tokenizer,
                text_encoder_2=t5,
                tokenizer_2=_tiny_t5_tokenizer(),
            )
    pipe.default_sample_size = 16  # 16x16 images by default: fast enough for tests and demos
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # built, not loaded: T5's dropout would otherwise make sampling random
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HeadsplatError(
            "--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise HeadsplatError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA (what SD3/FLUX ship in) and float32 on CPU."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise HeadsplatError(f"unknown dtype {dtype!r}: use auto, {', '.join(table)}")
    return table[dtype]


def load_pipeline(
    model: str, device: str = "auto", dtype: str = "auto", drop_t5: bool = False
) -> HeadGuidancePipeline:
    """A tiny model name, a Hugging Face id (from the local HF cache) or a local diffusers folder.

    drop_t5 leaves out SD3's T5-XXL text encoder (4.7B parameters; SD3 then sees zeros in its place).
    """
    torch_device = resolve_device(device)
    if model in TINY_MODELS:
        pipe = build_tiny_pipeline(model)
    else:
        from diffusers import DiffusionPipeline

        try:
            index = DiffusionPipeline.load_config(model)
            # Components saved as absent ([null, null], e.g. SD3 without T5) must be passed as None.
            absent = {name: None for name, entry in index.items() if entry == [None, None]}
            if drop_t5 and "text_encoder_3" in index:
                absent.update(text_encoder_3=None, tokenizer_3=None)
            with warnings.catch_warnings():
                # diffusers >= 0.36 renames torch_dtype to dtype; the old name works on every version.
                warnings.simplefilter("ignore", FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(
                    model, torch_dtype=resolve_dtype(dtype, torch_device), **absent
                )
        except OSError as err:
            raise HeadsplatError(
                f"could not load diffusers model {model!r}: it is neither a local diffusers folder nor in "
                f"the Hugging Face cache; download it first (huggingface-cli download {model}; gated "
                f"models need their licence accepted)"
            ) from err
        except ValueError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else "ValueError"
            raise HeadsplatError(f"could not load diffusers model {model!r}: {reason}") from err
    text_tokens = TINY_TEXT_TOKENS if model in TINY_MODELS else None
    return HeadGuidancePipeline(pipe.to(torch_device), max_sequence_length=text_tokens)


# ----------------------------------------------------------------------------------------------------
# The guided sampler
# ----------------------------------------------------------------------------------------------------


@dataclass
class GuideOutput:
    """What HeadGuidancePipeline returns (diffusers' output shape: .images)."""

    images: Any
    """PIL images, a [B, H, W, 3] array (output_type 'np') or latents (output_type 'latent')."""


def _step_is_guided(step: int, num_steps: int, pag_range: tuple[float, float]) -> bool:
    start, end = pag_range
    return start <= step / num_steps < end


class HeadGuidancePipeline:
    """A stock StableDiffusion3Pipeline or FluxPipeline plus head-level perturbed-attention guidance."""

    def __init__(self, pipe, max_sequence_length: int | None = None):
        """Wrap a stock pipeline; max_sequence_length is the T5 token count used when a call gives none
        (None: the stock 256 for SD3, 512 for FLUX)."""
        from diffusers import FluxPipeline, StableDiffusion3Pipeline

        if isinstance(pipe, StableDiffusion3Pipeline):
            self.family = "sd3"
        elif isinstance(pipe, FluxPipeline):
            self.family = "flux"
        else:
            raise HeadsplatError(
                f"head guidance needs a StableDiffusion3Pipeline or FluxPipeline, got {type(pipe).__name__}: "
                f"use an SD3 or FLUX model"
            )
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
        defaults = FAMILY_DEFAULTS[self.family]
        pag_scale = defaults["pag_scale"] if pag_scale is None else float(pag_scale)
        num_inference_steps = num_inference_steps or defaults["num_inference_steps"]
        guidance_scale = defaults["guidance_scale"] if guidance_scale is None else float(guidance_scale)
        heads = HeadSet.parse(pag_heads) if isinstance(pag_heads, str) else (pag_heads or HeadSet())
        heads.resolve(self.layout)  # validate before any work
        if pag_mode not in MODES:
            raise HeadsplatError(f"unknown --mode {pag_mode!r}: use one of {', '.join(MODES)}")
        if not 0.0 <= pag_strength <= 1.0:
            raise HeadsplatError(f"SoftPAG strength {pag_strength} is outside [0, 1]")
        start, end = pag_range
        if not 0.0 <= start <= end <= 1.0:
            raise HeadsplatError(f"guidance range {start},{end} must satisfy 0 <= start <= end <= 1")
        if num_inference_steps < 1:
            raise HeadsplatError(f"--steps must be at least 1, got {num_inference_steps}")
        guided = pag_scale != 0.0 and len(heads) > 0 and pag_strength > 0.0
        embeds = dict(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        settings = dict(
            embeds=embeds,
            heads=heads,
            pag_scale=pag_scale,
            strength=pag_strength,
            mode=pag_mode,
            pag_range=pag_range,
            guided=guided,
        )
        sampler = self._sample_sd3 if self.family == "sd3" else self._sample_flux
        try:
            images = sampler(
                prompt=prompt,
                negative_prompt=negative_prompt,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                true_cfg_scale=true_cfg_scale,
                generator=generator,
                latents=latents,
                output_type=output_type,
                max_sequence_length=max_sequence_length,
                callback_on_step_end=callback_on_step_end,
                **settings,
            )
        finally:
            self.pipe.maybe_free_model_hooks()
        return GuideOutput(images=images)

    def _check_inputs(self, *args, **kwargs) -> None:
        try:
            self.pipe.check_inputs(*args, **kwargs)
        except ValueError as err:
            raise HeadsplatError(str(err).splitlines()[0]) from err

    def _sample_sd3(
        self,
        prompt,
        negative_prompt,
        height,
        width,
        num_inference_steps,
        guidance_scale,
        true_cfg_scale,
        generator,
        latents,
        output_type,
        max_sequence_length,
        callback_on_step_end,
        embeds,
        heads,
        pag_scale,
        strength,
        mode,
        pag_range,
        guided,
    ):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
            retrieve_timesteps,
        )

        pipe = self.pipe
        max_sequence_length = max_sequence_length or self.max_sequence_length or 256
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        self._check_inputs(
            prompt,
            None,
            None,
            height,
            width,
            negative_prompt=negative_prompt,
            max_sequence_length=max_sequence_length,
            **embeds,
        )
        batch = (
            embeds["prompt_embeds"].shape[0]
            if prompt is None
            else 1
            if isinstance(prompt, str)
            else len(prompt)
        )
        device = pipe._execution_device
        do_cfg = guidance_scale > 1
        # Steps 1-5 below follow StableDiffusion3Pipeline.__call__ exactly, so w = 0 reproduces it.
        prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_cfg,
            device=device,
            max_sequence_length=max_sequence_length,
            **embeds,
        )
        latents = pipe.prepare_latents(
            batch,
            pipe.transformer.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
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
        timesteps, num_inference_steps = retrieve_timesteps(
            pipe.scheduler, num_inference_steps, device, **scheduler_kwargs
        )

        # Batch layout per step: [uncond]? + [cond] + [perturbed cond]?, one transformer call.
        for i, t in enumerate(pipe.progress_bar(timesteps)):
            perturb = guided and _step_is_guided(i, num_inference_steps, pag_range)
            parts, pooled_parts = [prompt_embeds], [pooled]
            if do_cfg:
                parts, pooled_parts = [negative_embeds, prompt_embeds], [negative_pooled, pooled]
            if perturb:
                parts, pooled_parts = parts + [prompt_embeds], pooled_parts + [pooled]
            model_input = torch.cat([latents] * len(parts))
            with perturbed_attention(
                pipe.transformer,
                heads if perturb else HeadSet(),
                strength,
                mode,
                rows=slice((len(parts) - 1) * batch, None),
            ):
                prediction = pipe.transformer(
                    hidden_states=model_input,
                    timestep=t.expand(model_input.shape[0]),
                    encoder_hidden_states=torch.cat(parts),
                    pooled_projections=torch.cat(pooled_parts),
                    return_dict=False,
                )[0]
            chunks = list(prediction.chunk(len(parts)))
            perturbed = chunks.pop() if perturb else None
            uncond = chunks.pop(0) if do_cfg else None
            noise_pred = combine_guidance(chunks[0], uncond, perturbed, guidance_scale, pag_scale)
            latents_dtype = latents.dtype
            latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if latents.dtype != latents_dtype:
                latents = latents.to(latents_dtype)
            if callback_on_step_end is not None:
                latents = callback_on_step_end(pipe, i, t, {"latents": latents}).get("latents", latents)

        if output_type == "latent":
            return latents
        latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type)

    def _sample_flux(
        self,
        prompt,
        negative_prompt,
        height,
        width,
        num_inference_steps,
        guidance_scale,
        true_cfg_scale,
        generator,
        latents,
        output_type,
        max_sequence_length,
        callback_on_step_end,
        embeds,
        heads,
        pag_scale,
        strength,
        mode,
        pag_range,
        guided,
    ):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        pipe = self.pipe
        max_sequence_length = max_sequence_length or self.max_sequence_length or 512
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        self._check_inputs(
            prompt,
            None,
            height,
            width,
            negative_prompt=negative_prompt,
            max_sequence_length=max_sequence_length,
            **embeds,
        )
        batch = (
            embeds["prompt_embeds"].shape[0]
            if prompt is None
            else 1
            if isinstance(prompt, str)
            else len(prompt)
        )
        device = pipe._execution_device
        has_negative = negative_prompt is not None or (
            embeds["negative_prompt_embeds"] is not None
            and embeds["negative_pooled_prompt_embeds"] is not None
        )
        do_true_cfg = true_cfg_scale > 1 and has_negative
        # Follows FluxPipeline.__call__ step by step, so w = 0 reproduces it.
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_embeds=embeds["prompt_embeds"],
            pooled_prompt_embeds=embeds["pooled_prompt_embeds"],
            device=device,
            max_sequence_length=max_sequence_length,
        )
        if do_true_cfg:
            negative_embeds, negative_pooled, negative_text_ids = pipe.encode_prompt(
                prompt=negative_prompt,
                prompt_2=None,
                prompt_embeds=embeds["negative_prompt_embeds"],
                pooled_prompt_embeds=embeds["negative_pooled_prompt_embeds"],
                device=device,
                max_sequence_length=max_sequence_length,
            )
        latents, image_ids = pipe.prepare_latents(
            batch,
            pipe.transformer.config.in_channels // 4,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if getattr(pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            latents.shape[1],
            pipe.scheduler.config.get("base_image_seq_len", 256),
            pipe.scheduler.config.get("max_image_seq_len", 4096),
            pipe.scheduler.config.get("base_shift", 0.5),
            pipe.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, num_inference_steps = retrieve_timesteps(
            pipe.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu
        )
        embed_guidance = pipe.transformer.config.guidance_embeds
        pipe.scheduler.set_begin_index(0)

        def run(embeds, pooled_embeds, txt_ids, copies: int, t, perturb_last: bool):
            """One transformer call on `copies` stacked copies of the latents; the last may be perturbed."""
            model_input = torch.cat([latents] * copies)
            timestep = t.expand(model_input.shape[0]).to(latents.dtype)
            guidance = None
            if embed_guidance:
                guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)
                guidance = guidance.expand(model_input.shape[0])
            with perturbed_attention(
                pipe.transformer,
                heads if perturb_last else HeadSet(),
                strength,
                mode,
                rows=slice((copies - 1) * batch, None),
            ):
                out = pipe.transformer(
                    hidden_states=model_input,
                    timestep=timestep / 1000,
                    guidance=guidance,
                    pooled_projections=torch.cat([pooled_embeds] * copies),
                    encoder_hidden_states=torch.cat([embeds] * copies),
                    txt_ids=txt_ids,
                    img_ids=image_ids,
                    joint_attention_kwargs={},
                    return_dict=False,
                )[0]
            return out.chunk(copies)

        for i, t in enumerate(pipe.progress_bar(timesteps)):
            perturb = guided and _step_is_guided(i, num_inference_steps, pag_range)
            if perturb:
                cond, perturbed = run(prompt_embeds, pooled, text_ids, 2, t, True)
            else:
                (cond,), perturbed = run(prompt_embeds, pooled, text_ids, 1, t, False), None
            uncond = None
            if do_true_cfg:
                (uncond,) = run(negative_embeds, negative_pooled, negative_text_ids, 1, t, False)
            noise_pred = combine_guidance(cond, uncond, perturbed, true_cfg_scale, pag_scale)
            latents_dtype = latents.dtype
            latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if latents.dtype != latents_dtype:
                latents = latents.to(latents_dtype)
            if callback_on_step_end is not None:
                latents = callback_on_step_end(pipe, i, t, {"latents": latents}).get("latents", latents)

        if output_type == "latent":
            return latents
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type)


# ----------------------------------------------------------------------------------------------------
# Objectives: (image, prompt) -> score, higher is better
# ----------------------------------------------------------------------------------------------------

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
    Weights come from a local folder or the Hugging Face cache (HF_HUB_OFFLINE is honoured)."""

    def __init__(self, model: str, processor: str | None = None, device: str = "cpu"):
        from transformers import AutoProcessor, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(model).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(processor or model)
        except (OSError, ValueError) as err:
            raise HeadsplatError(
                f"could not load CLIP scorer {model!r}: give a local folder or a model in the Hugging Face "
                f"cache (huggingface-cli download {model})"
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


# ----------------------------------------------------------------------------------------------------
# HeadHunter: greedy head search
# ----------------------------------------------------------------------------------------------------


@dataclass
class SearchConfig:
    """Settings of one HeadHunter search; a resumed search must use the same ones."""

    prompts: list[str]
    """Prompts to score on; every prompt is paired with every seed (M = prompts x seeds)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Sampling seeds."""
    k: int = 1
    """Heads added per round (top k)."""
    rounds: int = 1
    """Greedy rounds; the result has k x rounds heads."""
    objective: str = "sharpness"
    """Objective spec (see make_objective); higher is better."""
    pag_scale: float | None = None
    """Guidance scale w during the search (None: the family default)."""
    pag_strength: float = 1.0
    """SoftPAG u during the search (the paper searches at u = 1)."""
    pag_mode: str = "joint"
    """'joint' or 'image' perturbation."""
    num_inference_steps: int | None = None
    """Sampling steps (None: the family default)."""
    guidance_scale: float | None = None
    """CFG scale (SD3) / distilled guidance (FLUX) during the search."""
    height: int | None = None
    """Image height in pixels (None: the model default)."""
    width: int | None = None
    """Image width in pixels (None: the model default)."""
    pool: str = ""
    """Candidate heads as a head spec ('' = every head of the model)."""
    batch_size: int = 4
    """Prompt-seed pairs sampled per transformer call."""


@dataclass
class SearchState:
    """A search in progress or done; exactly what the output JSON holds."""

    model: str
    """The model searched (HF id, folder or tiny name)."""
    config: dict
    """The SearchConfig as a dict; a resume must match it exactly."""
    heads: list[list[int]] = field(default_factory=list)
    """Selected heads [[layer, head], ...] in the order chosen (loadable with --heads)."""
    scores: list[float] = field(default_factory=list)
    """Mean objective of each selected head when it was chosen."""
    rounds: list[dict] = field(default_factory=list)
    """Per round: {'scores': {'L:H': mean objective}, 'selected': [[l, h], ...]}."""
    complete: bool = False
    """True once every round has chosen its heads."""


def _pairs(config: SearchConfig) -> list[tuple[str, int]]:
    return [(prompt, seed) for prompt in config.prompts for seed in config.seeds]


def evaluate_heads(
    pipeline: HeadGuidancePipeline, heads: HeadSet, config: SearchConfig, objective: Objective
) -> float:
    """Mean objective over the config's prompt-seed pairs, sampled with `heads` perturbed."""
    pairs = _pairs(config)
    scores = []
    for start in range(0, len(pairs), config.batch_size):
        chunk = pairs[start : start + config.batch_size]
        images = pipeline(
            [prompt for prompt, _ in chunk],
            pag_heads=heads,
            pag_scale=config.pag_scale,
            pag_strength=config.pag_strength,
            pag_mode=config.pag_mode,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            height=config.height,
            width=config.width,
            generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in chunk],
        ).images
        scores += [objective(image, prompt) for image, (prompt, _) in zip(images, chunk)]
    return float(np.mean(scores))


def search_heads(
    pipeline: HeadGuidancePipeline,
    config: SearchConfig,
    objective: Objective,
    state: SearchState,
    save: Callable[[SearchState], None] | None = None,
    progress: bool = True,
) -> SearchState:
    """HeadHunter (arXiv 2506.10978): each round scores every remaining head together with the heads
    already chosen and adds the top k. `state` may be a partial search: finished work is skipped."""
    from tqdm import tqdm

    if config.k < 1 or config.rounds < 1:
        raise HeadsplatError(f"-k and --rounds must be at least 1, got k={config.k}, rounds={config.rounds}")
    if not config.prompts:
        raise HeadsplatError("the search needs at least one prompt")
    pipeline.pipe.set_progress_bar_config(disable=True)  # the search has its own bar
    layout = pipeline.layout
    if config.pool:
        pool = [
            (layer, head)
            for layer, heads in HeadSet.parse(config.pool).resolve(layout).items()
            for head in heads
        ]
    else:
        pool = layout.all_heads()
    total = config.rounds * len(pool)  # an upper bound for the bar: later rounds have fewer candidates
    with tqdm(total=total, desc="HeadHunter", unit="head", disable=not progress) as bar:
        for round_index in range(config.rounds):
            if round_index < len(state.rounds) and state.rounds[round_index].get("selected"):
                bar.update(len(pool))
                continue
            if round_index == len(state.rounds):
                state.rounds.append({"scores": {}, "selected": []})
            round_scores: dict[str, float] = state.rounds[round_index]["scores"]
            chosen = {tuple(h) for h in state.heads}
            selected = HeadSet().with_heads(state.heads)
            candidates = [c for c in pool if c not in chosen]
            if not candidates:
                break
            bar.update(len(pool) - len(candidates))
            for layer, head in candidates:
                key = f"{layer}:{head}"
                if key not in round_scores:
                    round_scores[key] = evaluate_heads(
                        pipeline, selected.with_heads([(layer, head)]), config, objective
                    )
                    if save is not None:
                        save(state)
                bar.update(1)
            ranked = sorted(candidates, key=lambda c: (-round_scores[f"{c[0]}:{c[1]}"], c))
            best = ranked[: config.k]
            state.rounds[round_index]["selected"] = [list(c) for c in best]
            state.heads += [list(c) for c in best]
            state.scores += [round_scores[f"{c[0]}:{c[1]}"] for c in best]
            if save is not None:
                save(state)
    state.complete = True
    if save is not None:
        save(state)
    return state


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    # The shared writer: the folder must exist (no tool makes a missing one), the file gets the usual
    # permissions (0644 under umask 022, not mkstemp's 0600), and a failed write leaves nothing behind.
    with atomic_output(path) as tmp:
        write(tmp)


def image_format(path: str | Path) -> str:
    """The PIL format name for an output image path, from its extension."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise HeadsplatError(f"cannot tell the image format of {path}: use a .png or .jpg name")
    return fmt


def save_image(image: Image.Image, path: str | Path) -> None:
    """Write an image atomically (format from the extension)."""
    fmt = image_format(path)
    _atomic_write(Path(path), lambda tmp: image.save(tmp, format=fmt))


def read_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB."""
    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as err:
        raise HeadsplatError(f"cannot read image {path}: {err}") from err


def save_search(state: SearchState, path: str | Path) -> None:
    """Write a search state as JSON, atomically."""
    text = json.dumps(asdict(state), indent=1)
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def load_heads(spec: str) -> HeadSet:
    """A head spec ('12:3,12:7', '12:*') or the path of a JSON heads file."""
    if spec.endswith(".json") or Path(spec).is_file():
        try:
            records = json.loads(Path(spec).read_text())
        except OSError as err:
            raise HeadsplatError(f"cannot read heads file {spec}: {err.strerror}") from err
        except json.JSONDecodeError as err:
            raise HeadsplatError(
                f"heads file {spec} is not valid JSON ({err.msg}, line {err.lineno})"
            ) from err
        return HeadSet.from_records(records)
    return HeadSet.parse(spec)


def load_search(path: str | Path, model: str, config: SearchConfig) -> SearchState:
    """Resume a partial search from its JSON, refusing one run with other settings."""
    try:
        data = json.loads(Path(path).read_text())
        state = SearchState(**data)
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise HeadsplatError(
            f"cannot resume from {path}: not a search file written by this tool ({err})"
        ) from err
    if state.model != model or state.config != asdict(config):
        raise HeadsplatError(
            f"{path} holds a search with other settings (model or search flags differ): use the same flags "
            f"to resume, or another -o to start a new search"
        )
    return state


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


@dataclass
class GuideConfig:
    """One guided image: shared by the CLI and the app."""

    prompt: str
    """Text prompt."""
    model: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    """Hugging Face id (from the local cache), local diffusers folder, or tiny-sd3 / tiny-flux."""
    heads: str = ""
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
    mode: str = "joint"
    """'joint': identity over the whole text+image sequence; 'image': image-to-image only (diffusers PAG)."""
    height: int | None = None
    """Image height in pixels (None: the model default)."""
    width: int | None = None
    """Image width in pixels (None: the model default)."""
    negative_prompt: str | None = None
    """Negative prompt for CFG."""
    guidance_range: tuple[float, float] = (0.0, 1.0)
    """Apply head guidance on steps whose fraction i/steps lies in [start, end)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    dtype: str = "auto"
    """auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."""
    drop_t5: bool = False
    """SD3: load without the T5-XXL text encoder (4.7B parameters)."""
    output: str = "guide.png"
    """Output image path."""


def generate(config: GuideConfig, pipeline: HeadGuidancePipeline | None = None) -> Image.Image:
    """Sample one image for a GuideConfig (loading the model unless a pipeline is given)."""
    heads = load_heads(config.heads) if config.heads else HeadSet()  # a bad spec fails before loading
    pipeline = pipeline or load_pipeline(config.model, config.device, config.dtype, config.drop_t5)
    image = pipeline(
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
    return image


def _range(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END fractions like 0,0.5, got {text!r}") from None
    return start, end


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=GuideConfig.model, help=f"HF id, local folder or {'/'.join(TINY_MODELS)}"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="head guidance scale w (default 3 SD3, 8 FLUX)"
    )
    parser.add_argument("--soft", type=float, default=1.0, help="SoftPAG strength u in [0,1] (default 1)")
    parser.add_argument("--cfg", type=float, default=None, help="CFG scale SD3 / distilled guidance FLUX")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20 SD3, 15 FLUX)")
    parser.add_argument(
        "--mode", choices=MODES, default="joint", help="joint (paper) or image (diffusers PAG)"
    )
    parser.add_argument("--height", type=int, default=None, help="image height in pixels")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument(
        "--no-t5", action="store_true", help="SD3: leave out the T5-XXL text encoder (saves memory)"
    )


def _generate_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipelines.guide",
        description="Sample an SD3/FLUX image with head-level perturbed-attention guidance "
        "(arXiv 2506.10978). Run 'python -m pipelines.guide search --help' for the HeadHunter head search.",
    )
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--heads", default="", help="heads 'L:H,L:H' or 'L:*', or a heads JSON file")
    _common_flags(parser)
    parser.add_argument(
        "--true-cfg", type=float, default=1.0, help="FLUX: true CFG scale with --negative-prompt"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt")
    parser.add_argument(
        "--guidance-range", type=_range, default=(0.0, 1.0), help="START,END fractions of the steps to guide"
    )
    parser.add_argument("-o", "--output", default="guide.png", help="output image (.png/.jpg)")
    return parser


def _search_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipelines.guide search",
        description="HeadHunter: greedy search for the attention heads whose perturbation best raises an "
        "objective; writes the chosen heads and their scores as JSON (usable with --heads).",
    )
    parser.add_argument("--prompts-file", required=True, help="text file, one prompt per line")
    parser.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    parser.add_argument("-k", type=int, default=1, help="heads added per round")
    parser.add_argument("--rounds", type=int, default=1, help="greedy rounds")
    parser.add_argument(
        "--objective",
        default="sharpness",
        help="colorfulness | sharpness | target:IMAGE | clip:MODEL[,PROCESSOR] (CLIP or PickScore weights)",
    )
    parser.add_argument("--pool", default="", help="candidate heads as a head spec (default: all heads)")
    parser.add_argument("--batch-size", type=int, default=4, help="prompt-seed pairs per transformer call")
    _common_flags(parser)
    parser.add_argument("--resume", action="store_true", help="continue the partial search in -o")
    parser.add_argument("-o", "--output", default="heads.json", help="output JSON")
    return parser


def _read_prompts(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise HeadsplatError(f"cannot read prompts file {path}: {err.strerror}") from err
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise HeadsplatError(f"prompts file {path} has no prompts: write one prompt per line")
    return prompts


def _is_complete_search(path: str) -> bool:
    try:
        return bool(json.loads(Path(path).read_text()).get("complete", True))
    except (OSError, ValueError, AttributeError):
        return True  # not a search state: nothing to lose by overwriting it


def run_search(args: argparse.Namespace) -> SearchState:
    """The 'search' subcommand."""
    config = SearchConfig(
        prompts=_read_prompts(args.prompts_file),
        seeds=args.seeds,
        k=args.k,
        rounds=args.rounds,
        objective=args.objective,
        pag_scale=args.scale,
        pag_strength=args.soft,
        pag_mode=args.mode,
        num_inference_steps=args.steps,
        guidance_scale=args.cfg,
        height=args.height,
        width=args.width,
        pool=args.pool,
        batch_size=args.batch_size,
    )
    if args.resume and Path(args.output).exists():
        state = load_search(args.output, args.model, config)
    else:
        if Path(args.output).exists() and not _is_complete_search(args.output):
            raise HeadsplatError(
                f"{args.output} holds an unfinished search: pass --resume to continue it, "
                f"or choose another -o"
            )
        state = SearchState(model=args.model, config=asdict(config))
    if args.batch_size < 1:
        raise HeadsplatError(f"--batch-size must be at least 1, got {args.batch_size}")
    objective = make_objective(config.objective, device=str(resolve_device(args.device)))
    pipeline = load_pipeline(args.model, args.device, args.dtype, args.no_t5)
    return search_heads(pipeline, config, objective, state, save=lambda s: save_search(s, args.output))


def _quiet_libraries() -> None:
    """Keep the CLI's stderr to our own messages: library warnings (missing accelerate or torchvision,
    hub retries) and weight-loading bars would bury the one-line error."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    # Loading bars only; the sampling and search bars are the pipeline's and ours.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _generate_main(args: argparse.Namespace) -> int:
    config = GuideConfig(
        prompt=args.prompt,
        model=args.model,
        heads=args.heads,
        scale=args.scale,
        soft=args.soft,
        cfg=args.cfg,
        true_cfg=args.true_cfg,
        steps=args.steps,
        seed=args.seed,
        mode=args.mode,
        height=args.height,
        width=args.width,
        negative_prompt=args.negative_prompt,
        guidance_range=args.guidance_range,
        device=args.device,
        dtype=args.dtype,
        drop_t5=args.no_t5,
        output=args.output,
    )
    # The output before the model loads: a folder that is missing, a name with no image format, a
    # heads file written over, all fail in a second rather than after sampling.
    check_output(config.output, [config.heads if Path(config.heads).is_file() else None], "output image")
    image_format(config.output)
    _quiet_libraries()
    save_image(generate(config), config.output)
    print(config.output)
    return 0


def _search_main(args: argparse.Namespace) -> int:
    target = args.objective.partition(":")[2] if args.objective.startswith("target:") else None
    check_output(args.output, [args.prompts_file, target], "output")
    _quiet_libraries()
    state = run_search(args)
    print(json.dumps({"output": args.output, "heads": state.heads, "scores": state.scores}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: generate (default) or 'search'; exit codes as every headsplat tool (pipelines.cli)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["search"]:
        args = _search_parser().parse_args(argv[1:])
        return run_cli(
            lambda: _search_main(args),
            interrupted=f"interrupted; continue the search with the same flags and --resume -o {args.output}",
        )
    args = _generate_parser().parse_args(argv)
    return run_cli(lambda: _generate_main(args), interrupted="interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())

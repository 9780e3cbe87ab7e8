"""Tiny random SD3 and FLUX pipelines built in code: the tests, `--model tiny-*` and the app's demo mode.

The sizes are diffusers' own test configs (a few layers, width 8 to 32), so sampling takes well under a
second on a CPU and nothing is downloaded. diffusers and transformers are imported only when a model is
built.
"""

from __future__ import annotations

import string

import torch

from models.errors import HeadsplatError

TINY_MODELS = ("tiny-sd3", "tiny-flux")
TINY_TEXT_TOKENS = 16
"""T5 tokens per prompt for the tiny models (the stock 256/512 would dwarf their 64 image tokens)."""

TINY_CLIP_TEXT = dict(
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
    hidden_size=32,
    intermediate_size=37,
    layer_norm_eps=1e-5,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=80,  # tiny_clip_tokenizer's 2 + 2 x 36 tokens fit
    hidden_act="gelu",
    projection_dim=32,
)
"""CLIPTextConfig arguments of a tiny CLIP text tower that reads tiny_clip_tokenizer's ids."""

TINY_SD3_TRANSFORMER = dict(
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
"""SD3Transformer2DModel arguments: 3 layers x 4 heads of width 8."""

TINY_FLUX_TRANSFORMER = dict(
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
"""FluxTransformer2DModel arguments: 2 double- and 2 single-stream blocks x 2 heads of width 16, with
FLUX.1-dev's distilled guidance embedding."""


def tiny_clip_tokenizer():
    """A CLIP tokenizer without merges: every word splits into single characters, so any lowercase
    text has tokens."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer():
    """A T5 tokenizer of single characters (a unigram vocabulary of 40 pieces)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -3.0) for ch in string.ascii_lowercase + string.digits]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def tiny_sd3_transformer(**overrides):
    """A random SD3Transformer2DModel of TINY_SD3_TRANSFORMER (with `overrides`), drawn from torch's
    global generator."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**{**TINY_SD3_TRANSFORMER, **overrides})


def tiny_flux_transformer(**overrides):
    """A random FluxTransformer2DModel of TINY_FLUX_TRANSFORMER (with `overrides`), drawn from torch's
    global generator."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**{**TINY_FLUX_TRANSFORMER, **overrides})


def _tiny_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def _tiny_t5():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
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
    return T5EncoderModel(config)


def build_tiny_pipeline(name: str, seed: int = 0):
    """A tiny random SD3 ('tiny-sd3': 3 layers x 4 heads) or FLUX ('tiny-flux': 2 double + 2 single
    blocks x 2 heads) pipeline built in code from diffusers' test configs: no download, 16x16 images."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if name not in TINY_MODELS:
        raise HeadsplatError(f"unknown tiny model {name!r}: use one of {', '.join(TINY_MODELS)}")
    clip_config = CLIPTextConfig(**TINY_CLIP_TEXT)
    tokenizer = tiny_clip_tokenizer()
    # The components are drawn in this order from one seeded generator: reordering them changes the model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-sd3":
            transformer = tiny_sd3_transformer()
            vae = _tiny_vae(latent_channels=4)
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
            transformer = tiny_flux_transformer()
            vae = _tiny_vae(latent_channels=1)
            t5 = _tiny_t5()
            pipe = FluxPipeline(
                transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(),
                vae=vae,
                text_encoder=CLIPTextModel(clip_config),
                tokenizer=tokenizer,
                text_encoder_2=t5,
                tokenizer_2=tiny_t5_tokenizer(),
            )
    pipe.default_sample_size = 16  # 16x16 images by default: fast enough for tests and demos
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # built, not loaded: T5's dropout would otherwise make sampling random
    pipe.set_progress_bar_config(disable=True)
    return pipe

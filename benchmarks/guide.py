"""Per-step cost of head-level perturbation guidance vs diffusers' layer PAG vs plain CFG (one JSON line).

    PYTHONPATH=. python benchmarks/guide.py                 # CPU: a small random SD3-shaped model
    PYTHONPATH=. python benchmarks/guide.py --full-size     # GPU: a random SD3-medium-shaped transformer

All methods run on the same random transformer, the same precomputed text embeddings and the same
latents; steps are timed with the pipelines' step-end callbacks over --repeats interleaved rounds.
ms_per_step is the fastest wall-clock step; on CPU the ratios use the median process CPU time per step
(one thread by default), which other jobs on a shared machine do not inflate. No weights are downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3PAGPipeline,
    StableDiffusion3Pipeline,
)

from models.attention_guidance import HeadSet
from pipelines.device import resolve_device
from pipelines.guide import HeadGuidancePipeline

SMALL = dict(  # SD3-shaped, ~1/8 of SD3-medium's width and depth: seconds per step on 2 CPU cores
    sample_size=32,
    patch_size=2,
    in_channels=16,
    num_layers=6,
    attention_head_dim=64,
    num_attention_heads=6,
    joint_attention_dim=512,
    caption_projection_dim=384,
    pooled_projection_dim=256,
    out_channels=16,
    pos_embed_max_size=96,
)
SD3_MEDIUM = dict(  # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
)


def step_times(run) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds between consecutive step-end callbacks of one sampling run."""
    stamps: list[tuple[float, float]] = []

    def on_step_end(pipe, i, t, tensors):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append((time.perf_counter(), time.process_time()))
        return tensors

    run(on_step_end)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full-size", action="store_true", help="SD3-medium-shaped transformer at 1024 px (GPU)"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 4 CPU, 10 full size)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds per method")
    parser.add_argument(
        "--layer", type=int, default=None, help="layer for layer PAG (default: the middle one)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: CPU time measures work)")
    args = parser.parse_args()

    device = torch.device(resolve_device(args.device))
    torch.set_num_threads(args.threads)
    config = SD3_MEDIUM if args.full_size else SMALL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 1024 if args.full_size else 256
    steps = args.steps or (10 if args.full_size else 3)
    layer = config["num_layers"] // 2 if args.layer is None else args.layer

    torch.manual_seed(0)
    with torch.device(device):
        transformer = SD3Transformer2DModel(**config).to(dtype).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    stock = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    # The constructor installs SD3's joint PAG processors (set_pag_applied_layers alone would not).
    pag = StableDiffusion3PAGPipeline(
        **{k: v for k, v in stock.components.items() if k in _PAG_COMPONENTS},
        pag_applied_layers=[f"transformer_blocks.{layer}"],
    )
    for pipe in (stock, pag):
        pipe.set_progress_bar_config(disable=True)
    guided = HeadGuidancePipeline(stock)

    g = torch.Generator("cpu").manual_seed(0)
    text_tokens = 77 + 256  # SD3: CLIP-L/G tokens + T5 tokens
    embeds = dict(
        prompt_embeds=torch.randn(1, text_tokens, config["joint_attention_dim"], generator=g).to(
            device, dtype
        ),
        negative_prompt_embeds=torch.randn(1, text_tokens, config["joint_attention_dim"], generator=g).to(
            device, dtype
        ),
        pooled_prompt_embeds=torch.randn(1, config["pooled_projection_dim"], generator=g).to(device, dtype),
        negative_pooled_prompt_embeds=torch.randn(1, config["pooled_projection_dim"], generator=g).to(
            device, dtype
        ),
    )
    latents = torch.randn(1, 16, size // 8, size // 8, generator=g).to(device, dtype)
    common = dict(
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=4.0,
        output_type="latent",
        latents=latents,
        **embeds,
    )
    n_heads = config["num_attention_heads"]
    # Sparse heads spread over four layers, like a HeadHunter result.
    last = config["num_layers"] - 1
    sparse = HeadSet(tuple((round(i * last / 3), h) for i in range(4) for h in (1, 3)))
    methods = {
        "cfg": lambda cb: stock(callback_on_step_end=cb, **common),
        "layer_pag": lambda cb: pag(pag_scale=3.0, callback_on_step_end=cb, **common),
        "head_pag_layer_image": lambda cb: guided(
            pag_heads=f"{layer}:*", pag_scale=3.0, pag_mode="image", callback_on_step_end=cb, **common
        ),
        "head_pag_layer_joint": lambda cb: guided(
            pag_heads=f"{layer}:*", pag_scale=3.0, pag_mode="joint", callback_on_step_end=cb, **common
        ),
        "head_pag_sparse_joint_soft": lambda cb: guided(
            pag_heads=sparse, pag_scale=3.0, pag_strength=0.5, callback_on_step_end=cb, **common
        ),
    }
    with torch.no_grad():
        for run in methods.values():  # warm-up (allocator, kernels)
            run(None)
        intervals: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, run in methods.items():
                intervals[name] += step_times(run)
    # The fastest step of each method: on a shared machine other jobs only ever add time.
    wall = {name: min(w for w, _ in times) for name, times in intervals.items()}
    cpu = {name: statistics.median(c for _, c in times) for name, times in intervals.items()}
    cost = cpu if device.type == "cpu" else wall

    result = {
        "benchmark": "guide",
        "model": "sd3-medium-shaped random" if args.full_size else "sd3-small random",
        "layers": config["num_layers"],
        "heads_per_layer": n_heads,
        "width": n_heads * config["attention_head_dim"],
        "resolution": size,
        "tokens": (size // 8 // 2) ** 2 + text_tokens,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads}",
        "dtype": str(dtype).removeprefix("torch."),
        "steps": steps,
        "pag_layer": layer,
        "sparse_heads": str(sparse),
        "ms_per_step": {name: round(1000 * seconds, 2) for name, seconds in wall.items()},
        "cpu_ms_per_step": {name: round(1000 * seconds, 2) for name, seconds in cpu.items()},
        "ratios_from": "cpu time" if device.type == "cpu" else "wall time",
        "head_vs_layer_pag": round(cost["head_pag_layer_image"] / cost["layer_pag"] - 1, 4),
        "sparse_vs_layer_pag": round(cost["head_pag_sparse_joint_soft"] / cost["layer_pag"] - 1, 4),
        "pag_vs_cfg": round(cost["layer_pag"] / cost["cfg"] - 1, 4),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


_PAG_COMPONENTS = (
    "transformer",
    "scheduler",
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "text_encoder_3",
    "tokenizer_3",
)

if __name__ == "__main__":
    main()

"""Guide: SD3/FLUX images steered by head-level perturbed-attention guidance (head-PAG, SoftPAG, HeadHunter).

    python -m pipelines.guide --prompt "a portrait" --model stabilityai/stable-diffusion-3-medium-diffusers \\
        --heads "12:3,12:7" --scale 3 --soft 0.5 --cfg 4 -o out.png
    python -m pipelines.guide search --prompts-file prompts.txt --model tiny-sd3 --objective sharpness \\
        -k 1 --rounds 2 -o heads.json

Method: arXiv 2506.10978. The stock diffusers pipeline (StableDiffusion3Pipeline or FluxPipeline)
encodes prompts, prepares latents and timesteps and decodes; the denoising loop here calls its
transformer once per step on [uncond, cond, perturbed] (or [cond, perturbed]) and combines
e = e_u + s (e_c - e_u) + w (e_c - e_perturbed).

One job a module:
    tiny.py          tiny random SD3/FLUX pipelines built in code (tests, --model tiny-*, the app's demo)
    loading.py       a model by name, HF id or folder, on a device and dtype
    heads.py         head specs and heads JSON files
    families.py      what SD3 and FLUX do differently: conditioning, CFG vs distilled guidance, packing
    sampling.py      HeadGuidancePipeline: the one guided denoising loop
    text_to_image.py GuideConfig and generate(): one image
    objectives.py    search objectives (image, prompt) -> score
    search.py        HeadHunter: SearchConfig, SearchState, search_heads, its resumable JSON
    image_files.py   output images and target images
    cli.py           the command line (flags made from the configs)
"""

from pipelines.guide.cli import main, run_search
from pipelines.guide.heads import load_heads
from pipelines.guide.image_files import image_format, read_image, save_image
from pipelines.guide.loading import load_pipeline, resolve_dtype
from pipelines.guide.objectives import (
    ClipScore,
    Objective,
    TargetSimilarity,
    colorfulness,
    make_objective,
    sharpness,
)
from pipelines.guide.sampling import FAMILY_DEFAULTS, GuideOutput, HeadGuidancePipeline
from pipelines.guide.search import (
    SearchConfig,
    SearchState,
    evaluate_heads,
    load_search,
    save_search,
    search_heads,
)
from pipelines.guide.text_to_image import GuideConfig, generate
from pipelines.guide.tiny import TINY_MODELS, TINY_TEXT_TOKENS, build_tiny_pipeline

__all__ = [
    "FAMILY_DEFAULTS",
    "TINY_MODELS",
    "TINY_TEXT_TOKENS",
    "ClipScore",
    "GuideConfig",
    "GuideOutput",
    "HeadGuidancePipeline",
    "Objective",
    "SearchConfig",
    "SearchState",
    "TargetSimilarity",
    "build_tiny_pipeline",
    "colorfulness",
    "evaluate_heads",
    "generate",
    "image_format",
    "load_heads",
    "load_pipeline",
    "load_search",
    "main",
    "make_objective",
    "read_image",
    "resolve_dtype",
    "run_search",
    "save_image",
    "save_search",
    "search_heads",
    "sharpness",
]

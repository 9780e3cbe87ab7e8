"""Guided sampling, HeadHunter search, objectives and the CLI (pipelines.guide) on tiny offline models."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3PAGPipeline
from PIL import Image

from models.attention_guidance import HeadSet
from models.errors import HeadsplatError
from pipelines import guide
from pipelines.guide import (
    HeadGuidancePipeline,
    SearchConfig,
    SearchState,
    TargetSimilarity,
    build_tiny_pipeline,
    colorfulness,
    evaluate_heads,
    search_heads,
    sharpness,
)
from pipelines.guide.tiny import TINY_CLIP_TEXT, tiny_clip_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


PROMPT = "a photo of a cat"
TEXT = 16  # T5 tokens per prompt
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sd3():
    return HeadGuidancePipeline(build_tiny_pipeline("tiny-sd3"), max_sequence_length=TEXT)


@pytest.fixture(scope="module")
def flux():
    return HeadGuidancePipeline(build_tiny_pipeline("tiny-flux"), max_sequence_length=TEXT)


def seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


# --- sampling


def assert_zero_scale_is_stock_and_nonzero_changes_it(pipeline, heads: str, scale: float, **kw):
    stock = pipeline.pipe(PROMPT, generator=seed(), **kw).images
    off = pipeline(PROMPT, pag_heads=heads, pag_scale=0.0, generator=seed(), **kw).images
    assert torch.equal(off, stock)
    for mode in ("joint", "image"):
        on = pipeline(PROMPT, pag_heads=heads, pag_scale=scale, pag_mode=mode, generator=seed(), **kw).images
        assert (on - stock).abs().max() > 1e-3


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_sd3_zero_scale_reproduces_the_stock_pipeline_and_nonzero_changes_it(sd3, cfg):
    kw = dict(num_inference_steps=2, guidance_scale=cfg, output_type="latent", max_sequence_length=TEXT)
    assert_zero_scale_is_stock_and_nonzero_changes_it(sd3, "1:0,2:3", 3.0, **kw)


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_flux_zero_scale_reproduces_the_stock_pipeline_and_nonzero_changes_it(flux, negative):
    kw = dict(
        num_inference_steps=2,
        output_type="latent",
        negative_prompt=negative,
        true_cfg_scale=4.0,
        max_sequence_length=TEXT,
    )
    assert_zero_scale_is_stock_and_nonzero_changes_it(flux, "0:1,3:0", 8.0, **kw)


@pytest.mark.parametrize("layer,cfg", [(1, 5.0), (2, 1.0)])
def test_image_mode_whole_layer_matches_diffusers_layer_pag(sd3, layer, cfg):
    components = {
        k: v for k, v in sd3.pipe.components.items() if k not in ("image_encoder", "feature_extractor")
    }
    kw = dict(
        num_inference_steps=2,
        guidance_scale=cfg,
        output_type="latent",
        height=16,
        width=16,
        max_sequence_length=TEXT,
    )
    ours = sd3(PROMPT, pag_heads=f"{layer}:*", pag_scale=3.0, pag_mode="image", generator=seed(), **kw).images
    for pag_layer in (layer, (layer + 1) % 3):
        pag = StableDiffusion3PAGPipeline(
            **components, pag_applied_layers=[f"transformer_blocks.{pag_layer}"]
        )
        pag.set_progress_bar_config(disable=True)
        theirs = pag(PROMPT, pag_scale=3.0, generator=seed(), **kw).images
        difference = (ours - theirs).abs().max().item()
        if pag_layer == layer:
            assert difference <= 1e-5
        else:
            assert difference > 1e-3  # the comparison can tell layers apart


def test_guidance_range_guides_only_the_chosen_steps(sd3):
    steps: dict[str, list] = {"stock": [], "late": []}

    def recorder(name):
        def record(pipe, i, t, tensors):
            steps[name].append(tensors["latents"].clone())
            return tensors

        return record

    kw = dict(num_inference_steps=2, output_type="latent", guidance_scale=1.0)
    sd3(PROMPT, pag_scale=0.0, generator=seed(), callback_on_step_end=recorder("stock"), **kw)
    sd3(
        PROMPT,
        pag_heads="1:*",
        pag_scale=3.0,
        pag_range=(0.5, 1.0),
        generator=seed(),
        callback_on_step_end=recorder("late"),
        **kw,
    )
    assert torch.equal(steps["late"][0], steps["stock"][0])
    assert (steps["late"][1] - steps["stock"][1]).abs().max() > 1e-5


def test_bad_guidance_settings_are_user_errors(sd3, flux):
    with pytest.raises(HeadsplatError, match="layer 7 is out of range"):
        sd3(PROMPT, pag_heads="7:0", num_inference_steps=1)
    with pytest.raises(HeadsplatError, match=r"--soft .* must be in \[0, 1\]"):
        sd3(PROMPT, pag_heads="1:0", pag_strength=2.0, num_inference_steps=1)
    with pytest.raises(HeadsplatError, match="--guidance-range"):
        sd3(PROMPT, pag_heads="1:0", pag_range=(0.8, 0.2), num_inference_steps=1)
    with pytest.raises(HeadsplatError, match="--steps must be 1-1000, got 0"):  # not the family default
        sd3(PROMPT, num_inference_steps=0)
    with pytest.raises(HeadsplatError, match="--scale must be a finite number"):
        sd3(PROMPT, pag_heads="1:0", pag_scale=float("nan"), num_inference_steps=1)
    # The loaded model's own factor: tiny FLUX packs its 1x-VAE latents in 2x2 patches.
    with pytest.raises(HeadsplatError, match="--height must be a positive multiple of 2 pixels"):
        flux(PROMPT, height=7, num_inference_steps=1)
    with pytest.raises(HeadsplatError, match="StableDiffusion3Pipeline or FluxPipeline"):
        HeadGuidancePipeline(object())


# --- search


def search_config(**overrides) -> SearchConfig:
    settings = dict(
        prompts=[PROMPT],
        seeds=[0],
        k=1,
        rounds=2,
        objective="target",
        pag_scale=5.0,
        num_inference_steps=1,
        guidance_scale=1.0,
        pool="1:*,2:*",
    )
    return SearchConfig(**{**settings, **overrides})


def test_headhunter_finds_the_planted_head_and_resumes_where_it_stopped(sd3, tmp_path):
    config = search_config()
    planted = HeadSet.parse("2:1")
    target = sd3(
        PROMPT,
        pag_heads=planted,
        pag_scale=config.pag_scale,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=1.0,
        generator=seed(0),
    ).images[0]
    calls = []

    def objective(image, prompt):
        calls.append(prompt)
        return TargetSimilarity(target)(image, prompt)

    # Interrupt after 10 of the 8 + 7 evaluations, then resume from the saved JSON: only 5 more run.
    saved = tmp_path / "heads.json"

    def stop_after_ten(state):
        guide.save_search(state, saved)
        if len(calls) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search_heads(sd3, config, objective, SearchState("tiny-sd3", asdict(config)), save=stop_after_ten)
    partial = json.loads(saved.read_text())
    assert partial["heads"] == [[2, 1]] and not partial["complete"]
    calls.clear()
    state = guide.load_search(saved, "tiny-sd3", config)
    result = search_heads(sd3, config, objective, state, save=stop_after_ten, progress=False)
    assert len(calls) == 5 and result.complete

    assert result.heads[0] == [2, 1] and result.scores[0] == 0.0
    round0 = result.rounds[0]["scores"]
    assert len(round0) == 8 and all(score < 0 for key, score in round0.items() if key != "2:1")
    round1 = result.rounds[1]["scores"]
    assert len(round1) == 7 and "2:1" not in round1
    assert result.heads[1] == [int(x) for x in max(round1, key=round1.get).split(":")]
    assert result.scores[1] == max(round1.values())
    assert HeadSet.from_records(json.loads(saved.read_text())) == HeadSet().with_heads(result.heads)
    with pytest.raises(HeadsplatError, match="other settings"):
        guide.load_search(saved, "tiny-sd3", search_config(k=2))


def test_evaluate_heads_averages_over_prompt_seed_pairs(sd3):
    config = search_config(prompts=["a cat", "a dog"], seeds=[0, 1], batch_size=3)
    prompts = []
    score = evaluate_heads(
        sd3, HeadSet.parse("1:0"), config, lambda image, prompt: prompts.append(prompt) or 1.0
    )
    assert score == 1.0 and sorted(prompts) == ["a cat", "a cat", "a dog", "a dog"]


# --- objectives


def test_no_reference_objectives_rank_obvious_images():
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    rng = np.random.default_rng(0)
    noisy_colour = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    checker = Image.fromarray(((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")
    assert colorfulness(grey) == 0.0 and colorfulness(noisy_colour) > 50
    assert sharpness(grey) == 0.0 and sharpness(checker) > 1000
    assert TargetSimilarity(checker)(checker) == 0.0 and TargetSimilarity(checker)(grey) < -0.2


def test_clip_scorer_loads_local_weights_and_scores_with_logit_scale(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(TINY_CLIP_TEXT),  # reads tiny_clip_tokenizer's ids
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(tmp_path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tiny_clip_tokenizer()).save_pretrained(tmp_path)

    scorer = guide.make_objective(f"clip:{tmp_path}")
    red, blue = Image.new("RGB", (40, 40), (250, 10, 10)), Image.new("RGB", (40, 40), (10, 10, 250))
    score = scorer(red, "a red square")
    model = CLIPModel.from_pretrained(tmp_path).eval()
    inputs = CLIPProcessor.from_pretrained(tmp_path)(
        text=["a red square"], images=[red], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        out = model(**inputs)
    expected = float(out.logits_per_image[0, 0])  # CLIP's own logit_scale.exp() * cosine
    assert score == pytest.approx(expected, rel=1e-5)
    assert scorer(blue, "a red square") != pytest.approx(score, rel=1e-4)
    with_processor = guide.make_objective(f"clip:{tmp_path},{tmp_path}")  # PickScore-style MODEL,PROCESSOR
    assert with_processor(red, "a red square") == pytest.approx(score, rel=1e-6)
    with pytest.raises(HeadsplatError, match="CLIP scorer .*missing: no such folder"):
        guide.make_objective(f"clip:{tmp_path / 'missing'}")


# --- CLI


def test_cli_generates_searches_and_reuses_the_search_output(tmp_path, capsys):
    image = tmp_path / "out.png"
    args = ["--prompt", PROMPT, "--model", "tiny-sd3", "--steps", "2", "--device", "cpu", "-o", str(image)]
    assert guide.main(args + ["--heads", "1:0,2:*", "--soft", "0.5", "--guidance-range", "0,0.5"]) == 0
    assert Image.open(image).size == (16, 16)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    heads = tmp_path / "heads.json"
    search = [
        "search",
        "--prompts-file",
        str(prompts),
        "--model",
        "tiny-flux",
        "--steps",
        "1",
        "--pool",
        "3:*",
    ]
    assert guide.main(search + ["--objective", "colorfulness", "-o", str(heads)]) == 0
    result = json.loads(heads.read_text())
    assert result["complete"] and len(result["heads"]) == 1 and result["heads"][0][0] == 3
    heads.write_text(json.dumps({**result, "complete": False}))  # an interrupted search is never overwritten
    assert guide.main(search + ["--objective", "colorfulness", "-o", str(heads)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert guide.main(search + ["--objective", "colorfulness", "-o", str(heads), "--resume"]) == 0
    assert json.loads(heads.read_text()) == result
    assert set(result["rounds"][0]["scores"]) == {"3:0", "3:1"}
    flux_image = tmp_path / "flux.png"
    flux_args = ["--prompt", PROMPT, "--model", "tiny-flux", "--steps", "1", "--heads", str(heads)]
    assert guide.main(flux_args + ["-o", str(flux_image)]) == 0
    assert flux_image.exists()
    capsys.readouterr()


@pytest.mark.parametrize(
    "heads,message",
    [("9:0", "layer 9 is out of range"), ("1:x", "LAYER:HEAD"), ("BAD_JSON", "not valid JSON")],
)
def test_cli_bad_heads_exit_nonzero_with_one_line(tmp_path, capsys, heads, message):
    if heads == "BAD_JSON":
        heads = tmp_path / "heads.json"
        heads.write_text("[[1, 2],")
    code = guide.main(
        ["--prompt", PROMPT, "--model", "tiny-sd3", "--heads", str(heads), "-o", str(tmp_path / "x.png")]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_cli_loads_local_diffusers_folders_and_rejects_non_dit_pipelines(tmp_path, capsys):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    build_tiny_pipeline("tiny-sd3").save_pretrained(tmp_path / "sd3")  # saved without T5
    out = tmp_path / "sd3.png"
    args = ["--prompt", PROMPT, "--model", str(tmp_path / "sd3"), "--steps", "1", "--heads", "1:*"]
    assert guide.main(args + ["--height", "16", "--width", "16", "--no-t5", "-o", str(out)]) == 0
    assert Image.open(out).size == (16, 16)

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    capsys.readouterr()
    assert guide.main(["--prompt", PROMPT, "--model", str(tmp_path / "ddpm"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "error: head guidance needs a StableDiffusion3Pipeline or FluxPipeline, got DDPMPipeline: "
        "use an SD3 or FLUX model"
    )


def test_cli_flag_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        guide.main(["--prompt", PROMPT, "--guidance-range", "half"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "START,END" in err


def test_cli_module_entry_point_reports_errors_in_one_line():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.guide",
            "search",
            "--prompts-file",
            "/nonexistent.txt",
            "--model",
            "tiny-sd3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert (
        proc.stderr.strip() == "error: cannot read prompts file /nonexistent.txt: No such file or directory"
    )

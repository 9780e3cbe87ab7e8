"""Guided sampling, HeadHunter search, objectives and the CLI (pipelines.guide) on tiny offline models."""

import json
import subprocess
import sys
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

torch.set_num_threads(2)
PROMPT = "a photo of a cat"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sd3():
    return HeadGuidancePipeline(build_tiny_pipeline("tiny-sd3"))


@pytest.fixture(scope="module")
def flux():
    return HeadGuidancePipeline(build_tiny_pipeline("tiny-flux"))


def seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


# --- sampling


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_sd3_zero_scale_reproduces_the_stock_pipeline_and_nonzero_changes_it(sd3, cfg):
    kw = dict(num_inference_steps=2, guidance_scale=cfg, output_type="latent")
    stock = sd3.pipe(PROMPT, generator=seed(), **kw).images
    off = sd3(PROMPT, pag_heads="1:0,2:3", pag_scale=0.0, generator=seed(), **kw).images
    assert torch.equal(off, stock)
    for mode in ("joint", "image"):
        on = sd3(PROMPT, pag_heads="1:0,2:3", pag_scale=3.0, pag_mode=mode, generator=seed(), **kw).images
        assert (on - stock).abs().max() > 1e-3


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_flux_zero_scale_reproduces_the_stock_pipeline_and_nonzero_changes_it(flux, negative):
    kw = dict(num_inference_steps=2, output_type="latent", negative_prompt=negative, true_cfg_scale=4.0)
    stock = flux.pipe(PROMPT, generator=seed(), **kw).images
    off = flux(PROMPT, pag_heads="0:1,3:0", pag_scale=0.0, generator=seed(), **kw).images
    assert torch.equal(off, stock)
    for mode in ("joint", "image"):
        on = flux(PROMPT, pag_heads="0:1,3:0", pag_scale=8.0, pag_mode=mode, generator=seed(), **kw).images
        assert (on - stock).abs().max() > 1e-3


@pytest.mark.parametrize("layer,cfg", [(1, 5.0), (2, 1.0)])
def test_image_mode_whole_layer_matches_diffusers_layer_pag(sd3, layer, cfg):
    components = {
        k: v for k, v in sd3.pipe.components.items() if k not in ("image_encoder", "feature_extractor")
    }
    kw = dict(num_inference_steps=2, guidance_scale=cfg, output_type="latent", height=16, width=16)
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


def test_bad_guidance_settings_are_user_errors(sd3):
    with pytest.raises(HeadsplatError, match="layer 7 is out of range"):
        sd3(PROMPT, pag_heads="7:0", num_inference_steps=1)
    with pytest.raises(HeadsplatError, match="outside"):
        sd3(PROMPT, pag_heads="1:0", pag_strength=2.0, num_inference_steps=1)
    with pytest.raises(HeadsplatError, match="guidance range"):
        sd3(PROMPT, pag_heads="1:0", pag_range=(0.8, 0.2), num_inference_steps=1)
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
        search_heads(
            sd3, config, objective, SearchState("tiny-sd3", guide.asdict(config)), save=stop_after_ten
        )
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
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=80,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
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
    CLIPProcessor(image_processor=image_processor, tokenizer=guide._tiny_clip_tokenizer()).save_pretrained(
        tmp_path
    )

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
    with pytest.raises(HeadsplatError, match="could not load CLIP scorer"):
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

"""Head-level attention perturbation (models.attention_guidance) on tiny SD3 and FLUX transformers."""

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

from models.attention_guidance import (
    AttentionLayout,
    HeadSet,
    SD3HeadPerturbationProcessor,
    attention_layout,
    attention_modules,
    head_runs,
    perturb_heads_,
    perturbed_attention,
    reference_perturbed_attention,
)
from models.errors import HeadsplatError
from pipelines.guide.tiny import tiny_flux_transformer, tiny_sd3_transformer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sd3(num_layers: int = 3) -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return tiny_sd3_transformer(sample_size=8, num_layers=num_layers).eval()


def tiny_flux() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return tiny_flux_transformer(guidance_embeds=False).eval()  # these tests call it without guidance


def sd3_inputs(batch: int = 1):
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(batch, 7, 32, generator=g),
        pooled_projections=torch.randn(batch, 64, generator=g),
        timestep=torch.tensor([500.0] * batch),
        return_dict=False,
    )


def flux_inputs(batch: int = 1):
    g = torch.Generator().manual_seed(1)
    h = w = 6
    ids = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    img_ids = torch.cat([torch.zeros(h * w, 1), ids.float()], dim=1)
    return dict(
        hidden_states=torch.randn(batch, h * w, 4, generator=g),
        encoder_hidden_states=torch.randn(batch, 5, 32, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        timestep=torch.tensor([0.5] * batch),
        img_ids=img_ids,
        txt_ids=torch.zeros(5, 3),
        return_dict=False,
    )


# --- HeadSet


def test_headset_parses_pairs_and_whole_layers():
    heads = HeadSet.parse("12:7, 12:3,4:*,12:3")
    assert heads.entries == ((4, None), (12, 3), (12, 7))
    assert str(heads) == "4:*,12:3,12:7"
    layout = AttentionLayout("sd3", (8,) * 24, 24)
    assert heads.resolve(layout) == {4: tuple(range(8)), 12: (3, 7)}


def test_headset_resolve_expands_wildcards_and_rejects_out_of_range():
    layout = AttentionLayout("sd3", (4, 4, 4), 3)
    assert HeadSet.parse("1:*,2:0").resolve(layout) == {1: (0, 1, 2, 3), 2: (0,)}
    with pytest.raises(HeadsplatError, match="layer 3 is out of range.*0..2"):
        HeadSet.parse("3:0").resolve(layout)
    with pytest.raises(HeadsplatError, match="head 1:4 is out of range.*0..3"):
        HeadSet.parse("1:4").resolve(layout)


@pytest.mark.parametrize("spec", ["12", "12:", "a:3", "12:3:4", "-1:2", "12;3"])
def test_headset_rejects_malformed_specs(spec):
    with pytest.raises(HeadsplatError, match="LAYER:HEAD"):
        HeadSet.parse(spec)


def test_headset_reads_every_json_shape_and_rejects_bad_records():
    expected = HeadSet.parse("1:2,3:*")
    assert HeadSet.from_records([[1, 2], [3, "*"]]) == expected
    assert HeadSet.from_records(["1:2", "3:*"]) == expected
    assert HeadSet.from_records({"heads": [{"layer": 1, "head": 2}, {"layer": 3}]}) == expected
    assert HeadSet.from_records(expected.to_records()) == expected
    for bad in [{"layers": []}, "1:2", [[1]], [[1, -2]], [[1.5, 2]], [[True, 2]], [None]]:
        with pytest.raises(HeadsplatError):
            HeadSet.from_records(bad)


# --- layout


def test_flux_layer_index_space_is_double_then_single_blocks():
    flux = tiny_flux()
    layout = attention_layout(flux)
    assert layout.heads_per_layer == (2, 2, 2, 2) and layout.double_stream_layers == 2
    assert layout.layer_name(1) == "transformer_blocks.1.attn"
    assert layout.layer_name(2) == "single_transformer_blocks.0.attn"
    modules = attention_modules(flux)
    assert modules[3] is flux.single_transformer_blocks[1].attn
    with perturbed_attention(flux, HeadSet.parse("2:1")):
        changed = [i for i, m in enumerate(modules) if type(m.processor).__name__ != "FluxAttnProcessor"]
    assert changed == [2]


def test_layer_1_never_selects_layer_10():
    model = tiny_sd3(num_layers=11)
    modules = attention_modules(model)
    with perturbed_attention(model, HeadSet.parse("1:*")):
        changed = [i for i, m in enumerate(modules) if isinstance(m.processor, SD3HeadPerturbationProcessor)]
    assert changed == [1]


def test_processors_are_restored_even_when_the_forward_fails():
    model = tiny_sd3()
    before = [m.processor for m in attention_modules(model)]
    with pytest.raises(RuntimeError, match="boom"):
        with perturbed_attention(model, HeadSet.parse("0:1,2:*")):
            raise RuntimeError("boom")
    assert [m.processor for m in attention_modules(model)] == before


def test_unsupported_models_and_processors_give_clear_errors():
    with pytest.raises(HeadsplatError, match="SD3Transformer2DModel and FluxTransformer2DModel"):
        attention_layout(torch.nn.Linear(2, 2))
    model = tiny_sd3()
    model.transformer_blocks[1].attn.set_processor(AttnProcessor2_0())
    with pytest.raises(
        HeadsplatError, match="transformer_blocks.1.attn uses attention processor AttnProcessor2_0"
    ):
        with perturbed_attention(model, HeadSet.parse("1:0")):
            pass
    assert isinstance(model.transformer_blocks[0].attn.processor, JointAttnProcessor2_0)
    with pytest.raises(HeadsplatError, match="outside"):
        with perturbed_attention(model, HeadSet.parse("0:0"), strength=1.5):
            pass


# --- the math


@pytest.mark.parametrize("mode", ["joint", "image"])
@pytest.mark.parametrize("image", [slice(0, 10), slice(4, 14)])  # SD3 [image, text] and FLUX [text, image]
@pytest.mark.parametrize("strength", [0.3, 1.0])
@pytest.mark.parametrize("heads", [[0, 3], [1, 2]])  # two runs / one run of consecutive heads
def test_fused_perturbation_matches_dense_attention_map_twin(mode, image, strength, heads):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 14, 8, generator=g) for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    fast = perturb_heads_(out.clone(), q, k, v, heads, strength, mode, image)
    dense = reference_perturbed_attention(q, k, v, heads, strength, mode, image)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)
    others = [h for h in range(4) if h not in heads]
    assert torch.equal(fast[:, others], out[:, others])  # unselected heads are bit-for-bit unchanged
    assert not torch.allclose(fast[:, heads], out[:, heads], atol=1e-3)


def test_head_runs_group_consecutive_heads():
    assert head_runs([7, 0, 2, 1, 2]) == [slice(0, 3), slice(7, 8)]
    assert head_runs([]) == []


def test_image_mode_leaves_text_queries_untouched_and_rows_pick_samples():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 14, 8, generator=g) for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    fast = perturb_heads_(out.clone(), q, k, v, [1], 1.0, "image", slice(0, 10), rows=slice(1, None))
    assert torch.equal(fast[0], out[0])  # row 0 is not a perturbed sample
    assert torch.equal(fast[1, 1, 10:], out[1, 1, 10:])  # text queries keep full attention
    assert not torch.allclose(fast[1, 1, :10], out[1, 1, :10], atol=1e-3)


# --- in the model


def _capture_heads(model, family: str, layer: int, inputs: dict, heads=None, strength=1.0, mode="joint"):
    """Run the model; return the layer's per-head attention output [B, H, S, D] and values [B, H, S, D]."""
    attn = attention_modules(model)[layer]
    seen = {}
    hooks = [attn.register_forward_pre_hook(lambda m, a, kw: seen.update(inputs=kw), with_kwargs=True)]
    if hasattr(attn, "to_out"):
        hooks.append(attn.to_out[0].register_forward_pre_hook(lambda m, a: seen.update(image=a[0])))
        if attn.to_add_out is not None:  # None in SD3's last, context-pre-only layer: text output unused
            hooks.append(attn.to_add_out.register_forward_pre_hook(lambda m, a: seen.update(text=a[0])))
    else:  # FLUX single-stream: the attention returns merged heads directly
        hooks.append(
            attn.register_forward_hook(lambda m, a, kw, out: seen.update(joint=out), with_kwargs=True)
        )
    try:
        with perturbed_attention(model, heads or HeadSet(), strength, mode):
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    x, ctx = seen["inputs"]["hidden_states"], seen["inputs"].get("encoder_hidden_states")
    if "joint" in seen:
        merged, value = seen["joint"], attn.to_v(x)
    elif "text" not in seen:
        merged, value = seen["image"], attn.to_v(x)
    elif family == "sd3":
        merged = torch.cat([seen["image"], seen["text"]], dim=1)
        value = torch.cat([attn.to_v(x), attn.add_v_proj(ctx)], dim=1)
    else:
        merged = torch.cat([seen["text"], seen["image"]], dim=1)
        value = torch.cat([attn.add_v_proj(ctx), attn.to_v(x)], dim=1)
    split = lambda t: t.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # noqa: E731
    return split(merged), split(value)


@pytest.mark.parametrize(
    "family,layer",
    [
        ("sd3", 1),
        ("sd3", 2),
        ("flux", 0),
        ("flux", 3),
    ],  # SD3's last layer is context-pre-only; FLUX 3 is single
)
@torch.no_grad()
def test_joint_mode_heads_output_their_values_others_untouched_and_u_interpolates(family, layer):
    model = tiny_sd3() if family == "sd3" else tiny_flux()
    inputs = sd3_inputs() if family == "sd3" else flux_inputs()
    head = 1
    plain, _ = _capture_heads(model, family, layer, inputs)
    full, value = _capture_heads(model, family, layer, inputs, HeadSet(((layer, head),)), 1.0)
    half, _ = _capture_heads(model, family, layer, inputs, HeadSet(((layer, head),)), 0.5)
    torch.testing.assert_close(full[:, head], value[:, head], atol=1e-6, rtol=0)
    assert not torch.allclose(plain[:, head], value[:, head], atol=1e-3)
    others = [h for h in range(full.shape[1]) if h != head]
    assert torch.equal(full[:, others], plain[:, others])
    torch.testing.assert_close(half[:, head], 0.5 * plain[:, head] + 0.5 * value[:, head], atol=1e-6, rtol=0)


@torch.no_grad()
def test_flux_single_blocks_know_where_the_image_tokens_start():
    model = tiny_flux()
    inputs = flux_inputs()
    plain, _ = _capture_heads(model, "flux", 2, inputs)
    image, _ = _capture_heads(model, "flux", 2, inputs, HeadSet.parse("2:0"), 1.0, "image")
    n_text = inputs["encoder_hidden_states"].shape[1]
    assert torch.equal(image[:, 0, :n_text], plain[:, 0, :n_text])  # text queries untouched
    assert not torch.allclose(image[:, 0, n_text:], plain[:, 0, n_text:], atol=1e-3)


@torch.no_grad()
def test_perturbed_rows_leave_the_other_samples_of_the_batch_alone():
    model = tiny_sd3()
    one = sd3_inputs(batch=1)
    two = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in one.items()}
    plain = model(**one)[0]
    with perturbed_attention(model, HeadSet.parse("1:*"), 1.0, "joint", rows=slice(1, None)):
        both = model(**two)[0]
    with perturbed_attention(model, HeadSet.parse("1:*"), 1.0, "joint"):
        perturbed = model(**one)[0]
    torch.testing.assert_close(both[0:1], plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1:2], perturbed, atol=1e-6, rtol=0)
    assert not torch.allclose(plain, perturbed, atol=1e-3)


@torch.no_grad()
def test_flux_fused_qkv_projections_perturb_the_same_way():
    model = tiny_flux()
    heads = HeadSet.parse("0:1,2:0")
    with perturbed_attention(model, heads):
        separate = model(**flux_inputs())[0]
    model.fuse_qkv_projections()
    with perturbed_attention(model, heads):
        fused = model(**flux_inputs())[0]
    torch.testing.assert_close(fused, separate, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused, model(**flux_inputs())[0], atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["joint", "image"])
@torch.no_grad()
def test_cuda_perturbation_matches_the_cpu_result(mode):
    for build, inputs in ((tiny_sd3, sd3_inputs), (tiny_flux, flux_inputs)):
        model = build()
        heads = HeadSet.parse("1:0,1:2" if build is tiny_sd3 else "0:1,3:0")
        with perturbed_attention(model, heads, 0.7, mode):
            cpu = model(**inputs())[0]
        model = model.cuda()
        on_gpu = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs().items()}
        with perturbed_attention(model, heads, 0.7, mode):
            gpu = model(**on_gpu)[0].cpu()
        torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)

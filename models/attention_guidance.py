"""Head-level perturbed-attention guidance for diffusers Diffusion Transformers (SD3 MM-DiT, FLUX).

"Fine-Grained Perturbation Guidance via Attention Head Selection" (arXiv 2506.10978): the attention map
A of a chosen set of (layer, head) pairs is replaced by the identity, softened by SoftPAG,
A' = (1 - u) A + u I. Because the output is linear in A this is O' = (1 - u) O + u V per head, so the
fused kernel (F.scaled_dot_product_attention) still runs and no sequence x sequence map is ever built.

Two modes say which identity:

- ``"joint"`` (the paper's official code): the identity over the whole joint text+image sequence, so a
  perturbed head outputs its own value for every token, text and image alike.
- ``"image"`` (diffusers' ``PAGJointAttnProcessor2_0``): only the image-to-image block is made
  diagonal. An image query then attends to itself and to all text tokens; text queries are untouched.
  Softened per head this is O'_img = (1 - u) O_img + u softmax([q.k_self, q.K_text]) [v_self; V_text],
  O'_text = O_text; all heads of one layer at u = 1 is exactly diffusers' layer-level PAG. Only the
  image x text block of logits is materialised (N_img x N_text, small next to N x N).

Layers are addressed by one integer index per attention layer (never by name patterns, so layer 1 is
never confused with layer 10):

- SD3: ``transformer_blocks[i].attn`` for i in [0, num_layers) (24 for SD3-medium). The extra image-only
  ``attn2`` of SD3.5's dual-attention blocks is not perturbed.
- FLUX: the double-stream blocks first, then the single-stream blocks: index i < D is
  ``transformer_blocks[i].attn``, index D + j is ``single_transformer_blocks[j].attn``
  (D = 19, 57 layers in all for FLUX.1-dev). SD3 orders tokens [image, text], FLUX [text, image].
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import HeadsplatError

PerturbationMode = Literal["joint", "image"]
MODES: tuple[str, ...] = ("joint", "image")


# ----------------------------------------------------------------------------------------------------
# Which attention layers a model has
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionLayout:
    """The perturbable attention layers of one DiT, in layer-index order."""

    family: str
    """Model family: "sd3" or "flux"."""
    heads_per_layer: tuple[int, ...]
    """Number of attention heads of each layer."""
    double_stream_layers: int
    """How many leading layers are double-stream (separate text and image weights); the rest are
    FLUX single-stream blocks. Equal to the layer count for SD3."""

    @property
    def num_layers(self) -> int:
        """Total number of perturbable attention layers."""
        return len(self.heads_per_layer)

    @property
    def num_heads(self) -> int:
        """Total number of (layer, head) pairs: the HeadHunter search pool size."""
        return sum(self.heads_per_layer)

    def layer_name(self, layer: int) -> str:
        """The module path of a layer's attention, e.g. 'single_transformer_blocks.3.attn'."""
        if layer < self.double_stream_layers:
            return f"transformer_blocks.{layer}.attn"
        return f"single_transformer_blocks.{layer - self.double_stream_layers}.attn"

    def all_heads(self) -> list[tuple[int, int]]:
        """Every (layer, head) pair, layer-major."""
        return [(layer, head) for layer, n in enumerate(self.heads_per_layer) for head in range(n)]


def _family(transformer: nn.Module) -> str:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if isinstance(transformer, SD3Transformer2DModel):
        return "sd3"
    if isinstance(transformer, FluxTransformer2DModel):
        return "flux"
    raise HeadsplatError(
        f"head guidance supports diffusers' SD3Transformer2DModel and FluxTransformer2DModel, not "
        f"{type(transformer).__name__}: use an SD3 or FLUX model "
        f"(e.g. stabilityai/stable-diffusion-3-medium-diffusers)"
    )


def attention_modules(transformer: nn.Module) -> list[nn.Module]:
    """The attention module of each layer, indexed as described in the module docstring."""
    family = _family(transformer)
    modules = [block.attn for block in transformer.transformer_blocks]
    if family == "flux":
        modules += [block.attn for block in transformer.single_transformer_blocks]
    return modules


def attention_layout(transformer: nn.Module) -> AttentionLayout:
    """Layer and head counts of an SD3 or FLUX transformer (raises HeadsplatError for other models)."""
    family = _family(transformer)
    modules = attention_modules(transformer)
    return AttentionLayout(
        family=family,
        heads_per_layer=tuple(int(m.heads) for m in modules),
        double_stream_layers=len(transformer.transformer_blocks),
    )


# ----------------------------------------------------------------------------------------------------
# A set of heads
# ----------------------------------------------------------------------------------------------------

_ENTRY = re.compile(r"^\s*(\d+)\s*:\s*(\d+|\*)\s*$")


@dataclass(frozen=True)
class HeadSet:
    """A set of (layer, head) pairs; head None stands for every head of that layer."""

    entries: tuple[tuple[int, int | None], ...] = field(default=())
    """Sorted, unique (layer, head) pairs; (layer, None) means the whole layer."""

    def __post_init__(self):
        clean = sorted(set(self.entries), key=lambda e: (e[0], -1 if e[1] is None else e[1]))
        object.__setattr__(self, "entries", tuple(clean))

    @classmethod
    def parse(cls, spec: str) -> HeadSet:
        """Parse '12:3,12:7' (layer:head pairs) or '12:*' (all heads of layer 12); '' is the empty set."""
        entries: list[tuple[int, int | None]] = []
        for part in spec.split(","):
            if not part.strip():
                continue
            match = _ENTRY.match(part)
            if match is None:
                raise HeadsplatError(
                    f"bad head {part.strip()!r} in {spec!r}: write heads as LAYER:HEAD pairs separated by "
                    f"commas, e.g. '12:3,12:7', or LAYER:* for a whole layer"
                )
            head = None if match.group(2) == "*" else int(match.group(2))
            entries.append((int(match.group(1)), head))
        return cls(tuple(entries))

    @classmethod
    def from_records(cls, records: Any) -> HeadSet:
        """Build from decoded JSON: a list of [layer, head] pairs, 'L:H' strings or {"layer", "head"}
        objects, or an object with such a list under "heads" (what the HeadHunter search writes)."""
        if isinstance(records, dict):
            if "heads" not in records:
                raise HeadsplatError(
                    'heads JSON object has no "heads" list: expected {"heads": [[12, 3], ...]}'
                )
            records = records["heads"]
        if not isinstance(records, list):
            raise HeadsplatError(
                f"heads JSON must be a list of [layer, head] pairs, got {type(records).__name__}"
            )
        entries: list[tuple[int, int | None]] = []
        for record in records:
            if isinstance(record, str):
                entries.extend(cls.parse(record).entries)
                continue
            if isinstance(record, dict):
                record = [record.get("layer"), record.get("head", "*")]
            ok = (
                isinstance(record, list | tuple)
                and len(record) == 2
                and _is_index(record[0])
                and (_is_index(record[1]) or record[1] in ("*", None))
            )
            if not ok:
                raise HeadsplatError(
                    f"bad head record {record!r} in heads JSON: expected [layer, head] with non-negative "
                    f"integers (head may be '*' for a whole layer)"
                )
            entries.append((int(record[0]), None if record[1] in ("*", None) else int(record[1])))
        return cls(tuple(entries))

    def resolve(self, layout: AttentionLayout) -> dict[int, tuple[int, ...]]:
        """Validate against a model and expand wildcards: {layer: sorted heads}."""
        per_layer: dict[int, set[int]] = {}
        for layer, head in self.entries:
            if not 0 <= layer < layout.num_layers:
                raise HeadsplatError(
                    f"layer {layer} is out of range: this {layout.family} model has layers "
                    f"0..{layout.num_layers - 1}"
                )
            n = layout.heads_per_layer[layer]
            if head is not None and not 0 <= head < n:
                raise HeadsplatError(
                    f"head {layer}:{head} is out of range: layer {layer} has heads 0..{n - 1}"
                )
            per_layer.setdefault(layer, set()).update(range(n) if head is None else (head,))
        return {layer: tuple(sorted(heads)) for layer, heads in sorted(per_layer.items())}

    def with_heads(self, heads: Iterable[tuple[int, int]]) -> HeadSet:
        """This set plus more (layer, head) pairs."""
        return HeadSet(self.entries + tuple((int(layer), int(head)) for layer, head in heads))

    def to_records(self) -> list[list[int | str]]:
        """JSON-ready [[layer, head], ...] ('*' for whole layers)."""
        return [[layer, "*" if head is None else head] for layer, head in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        return iter(self.entries)

    def __str__(self) -> str:
        return ",".join(f"{layer}:{'*' if head is None else head}" for layer, head in self.entries)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ----------------------------------------------------------------------------------------------------
# The per-head perturbation itself (head-first layout [B, H, S, D])
# ----------------------------------------------------------------------------------------------------


def image_diagonal_attention(
    query: Tensor,  # [B, H, S, D]
    key: Tensor,  # [B, H, S, D]
    value: Tensor,  # [B, H, S, D]
    image: slice,
    scale: float | None = None,
) -> Tensor:  # [B, H, N_img, D]
    """Attention of each image query over itself and all non-image tokens (diffusers' PAG mask)."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    q_img, k_img, v_img = query[:, :, image], key[:, :, image], value[:, :, image]
    k_text = torch.cat([key[:, :, : image.start], key[:, :, image.stop :]], dim=2)
    v_text = torch.cat([value[:, :, : image.start], value[:, :, image.stop :]], dim=2)
    # Softmax in float32 like the fused kernels accumulate, whatever the model's dtype.
    self_logit = (q_img.float() * k_img.float()).sum(-1, keepdim=True) * scale  # [B, H, N_img, 1]
    text_logit = (q_img.float() @ k_text.float().transpose(-1, -2)) * scale  # [B, H, N_img, N_text]
    weights = torch.cat([self_logit, text_logit], dim=-1).softmax(dim=-1)
    mixed = weights[..., :1] * v_img.float() + weights[..., 1:] @ v_text.float()
    return mixed.to(value.dtype)


def perturb_heads_(
    output: Tensor,  # [B, H, S, D] attention output, modified in place
    query: Tensor,  # [B, H, S, D] after q-norm and rotary embedding
    key: Tensor,  # [B, H, S, D]
    value: Tensor,  # [B, H, S, D]
    heads: Sequence[int],
    strength: float,
    mode: str,
    image: slice,
    rows: slice = slice(None),
) -> Tensor:  # [B, H, S, D]
    """SoftPAG on chosen heads and batch rows: O' = (1 - u) O + u O_identity, in place."""
    if strength == 0.0 or not heads:
        return output
    index = torch.as_tensor(list(heads), device=output.device)
    rows_out = output[rows]  # a view: writing into it writes the real output
    current = rows_out.index_select(1, index)
    v = value[rows].index_select(1, index)
    if mode == "joint":
        target = v
    elif mode == "image":
        target = current.clone()
        target[:, :, image] = image_diagonal_attention(
            query[rows].index_select(1, index), key[rows].index_select(1, index), v, image
        )
    else:
        raise HeadsplatError(f"unknown perturbation mode {mode!r}: use one of {', '.join(MODES)}")
    # lerp returns its end point exactly at weight 1 (the plain identity, O = V).
    rows_out[:, index] = torch.lerp(current, target, float(strength))
    return output


def reference_perturbed_attention(
    query: Tensor,  # [B, H, S, D]
    key: Tensor,  # [B, H, S, D]
    value: Tensor,  # [B, H, S, D]
    heads: Sequence[int],
    strength: float,
    mode: str,
    image: slice,
) -> Tensor:  # [B, H, S, D]
    """Dense twin of SDPA + perturb_heads_: builds A' = (1 - u) A + u A_identity explicitly (tests only)."""
    s = query.shape[2]
    attn = (query.double() @ key.double().transpose(-1, -2) / math.sqrt(query.shape[-1])).softmax(-1)
    if mode == "joint":
        identity = torch.eye(s, dtype=attn.dtype, device=attn.device).expand_as(attn)
    else:
        mask = torch.zeros(s, s, dtype=attn.dtype, device=attn.device)
        mask[image, image] = float("-inf")
        mask[image, image].fill_diagonal_(0.0)  # a view: writes into mask
        logits = query.double() @ key.double().transpose(-1, -2) / math.sqrt(query.shape[-1])
        identity = (logits + mask).softmax(-1)
    perturbed = attn.clone()
    idx = list(heads)
    perturbed[:, idx] = (1 - strength) * attn[:, idx] + strength * identity[:, idx]
    return (perturbed @ value.double()).to(value.dtype)


# ----------------------------------------------------------------------------------------------------
# Attention processors
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Perturbation:
    """Settings shared by all processors installed by one perturbed_attention() context."""

    strength: float
    mode: str
    rows: slice
    text_tokens: int | None = None
    """FLUX single-stream blocks see one concatenated sequence; the transformer's pre-hook records how
    many of its leading tokens are text."""


class SD3HeadPerturbationProcessor:
    """JointAttnProcessor2_0 (SD3 joint attention, tokens [image, text]) with chosen heads perturbed."""

    def __init__(self, heads: Sequence[int], perturbation: _Perturbation):
        self.heads = tuple(heads)
        self.perturbation = perturbation

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,  # [B, N_img, C]
        encoder_hidden_states: Tensor | None = None,  # [B, N_text, C_text]
        attention_mask: Tensor | None = None,
        *args,
        **kwargs,
    ):
        batch = hidden_states.shape[0]
        image_tokens = hidden_states.shape[1]
        # Same projections, head split and q/k norms as diffusers' JointAttnProcessor2_0.
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            text_q = (
                attn.add_q_proj(encoder_hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            )
            text_k = (
                attn.add_k_proj(encoder_hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            )
            text_v = (
                attn.add_v_proj(encoder_hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            )
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query = torch.cat([query, text_q], dim=2)
            key = torch.cat([key, text_k], dim=2)
            value = torch.cat([value, text_v], dim=2)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        p = self.perturbation
        perturb_heads_(out, query, key, value, self.heads, p.strength, p.mode, slice(0, image_tokens), p.rows)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        out, text_out = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        out = attn.to_out[1](attn.to_out[0](out))
        return out, text_out


class FluxHeadPerturbationProcessor:
    """FluxAttnProcessor (tokens [text, image], RMS q/k norms, rotary) with chosen heads perturbed."""

    def __init__(self, heads: Sequence[int], perturbation: _Perturbation, original: Any):
        self.heads = tuple(heads)
        self.perturbation = perturbation
        # Keep the attention backend the model was set up with (flash, sage, native ...).
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,  # [B, N, C]: image tokens (double-stream) or [text, image] (single-stream)
        encoder_hidden_states: Tensor | None = None,  # [B, N_text, C]
        attention_mask: Tensor | None = None,
        image_rotary_emb: tuple[Tensor, Tensor] | None = None,
    ):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        p = self.perturbation
        if attention_mask is not None and p.mode == "image":
            raise HeadsplatError(
                "image-mode head perturbation does not support an attention mask; use mode 'joint'"
            )
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))

        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            if getattr(attn, "fused_projections", False):
                tq, tk, tv = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                tq = attn.add_q_proj(encoder_hidden_states)
                tk = attn.add_k_proj(encoder_hidden_states)
                tv = attn.add_v_proj(encoder_hidden_states)
            tq = attn.norm_added_q(tq.unflatten(-1, (-1, attn.head_dim)))
            tk = attn.norm_added_k(tk.unflatten(-1, (-1, attn.head_dim)))
            tv = tv.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([tq, query], dim=1)
            key = torch.cat([tk, key], dim=1)
            value = torch.cat([tv, value], dim=1)
            text_tokens = encoder_hidden_states.shape[1]
        else:
            text_tokens = p.text_tokens if p.text_tokens is not None else 0

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )  # [B, S, H, D]
        image = slice(text_tokens, query.shape[1])
        perturb_heads_(
            out.transpose(1, 2),
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            self.heads,
            p.strength,
            p.mode,
            image,
            p.rows,
        )
        out = out.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            n_text = encoder_hidden_states.shape[1]
            text_out, out = out.split_with_sizes([n_text, out.shape[1] - n_text], dim=1)
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            return out, attn.to_add_out(text_out.contiguous())
        return out


def _check_processor(family: str, layer_name: str, processor: Any) -> None:
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    expected = JointAttnProcessor2_0 if family == "sd3" else FluxAttnProcessor
    if type(processor) is not expected:
        raise HeadsplatError(
            f"{layer_name} uses attention processor {type(processor).__name__}, which head guidance cannot "
            f"perturb (it expects diffusers' {expected.__name__}): reset it with "
            f"transformer.set_default_attn_processor() or unfuse QKV projections first"
        )


@contextmanager
def perturbed_attention(
    transformer: nn.Module,
    heads: HeadSet,
    strength: float = 1.0,
    mode: str = "joint",
    rows: slice | None = None,
) -> Iterator[dict[int, tuple[int, ...]]]:
    """Perturb `heads` of an SD3/FLUX transformer inside the block; original processors come back on exit.

    strength is SoftPAG's u in [0, 1]; rows selects the batch samples to perturb (all by default), so
    one batched forward can carry unperturbed and perturbed samples. Yields {layer: heads}.
    """
    if mode not in MODES:
        raise HeadsplatError(f"unknown perturbation mode {mode!r}: use one of {', '.join(MODES)}")
    if not 0.0 <= float(strength) <= 1.0:
        raise HeadsplatError(f"perturbation strength u={strength} is outside [0, 1]")
    layout = attention_layout(transformer)
    per_layer = heads.resolve(layout)
    modules = attention_modules(transformer)
    for layer in per_layer:
        _check_processor(layout.family, layout.layer_name(layer), modules[layer].processor)

    perturbation = _Perturbation(float(strength), mode, rows if rows is not None else slice(None))
    originals: dict[int, Any] = {}
    hook = None
    try:
        for layer, layer_heads in per_layer.items():
            module = modules[layer]
            originals[layer] = module.processor
            if layout.family == "sd3":
                module.set_processor(SD3HeadPerturbationProcessor(layer_heads, perturbation))
            else:
                module.set_processor(
                    FluxHeadPerturbationProcessor(layer_heads, perturbation, module.processor)
                )
        if layout.family == "flux" and per_layer:

            def record_text_tokens(_module, args, kwargs):
                text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
                perturbation.text_tokens = None if text is None else text.shape[1]

            hook = transformer.register_forward_pre_hook(record_text_tokens, with_kwargs=True)
        yield per_layer
    finally:
        if hook is not None:
            hook.remove()
        for layer, processor in originals.items():
            modules[layer].set_processor(processor)


# ----------------------------------------------------------------------------------------------------
# Guidance arithmetic
# ----------------------------------------------------------------------------------------------------


def combine_guidance(
    cond: Tensor,  # [B, ...] conditional prediction e_c
    uncond: Tensor | None,  # [B, ...] unconditional prediction e_u (None without CFG)
    perturbed: Tensor | None,  # [B, ...] prediction of the perturbed conditional pass e_p
    guidance_scale: float,
    pag_scale: float,
) -> Tensor:  # [B, ...]
    """e = e_u + s (e_c - e_u) + w (e_c - e_p); e_c replaces the CFG term without CFG."""
    guided = cond if uncond is None else uncond + guidance_scale * (cond - uncond)
    if perturbed is not None:
        guided = guided + pag_scale * (cond - perturbed)
    return guided

"""Loading a model for guidance: a tiny model name, a Hugging Face id or a local diffusers folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from models.errors import HeadsplatError
from pipelines.device import resolve_device
from pipelines.guide.sampling import HeadGuidancePipeline
from pipelines.guide.tiny import TINY_MODELS, TINY_TEXT_TOKENS, build_tiny_pipeline

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA (what SD3/FLUX ship in) and float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise HeadsplatError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def local_weights(name: str, what: str = "model") -> str:
    """The folder holding the weights `name` names: a local folder as given, or a Hugging Face id's snapshot
    in the local cache (HF_HUB_CACHE / HF_HOME honoured). Weights are never downloaded at run time, so an id
    that is not cached fails at once, without the Hub client's retries over the network."""
    if Path(name).is_dir():
        return name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except HFValidationError as err:
        raise HeadsplatError(
            f"{what} {name}: no such folder, and not a Hugging Face id (owner/name)"
        ) from err
    except LocalEntryNotFoundError as err:
        raise HeadsplatError(
            f"{what} {name} is not in the local Hugging Face cache (nor a local folder): download it first "
            f"with `hf download {name}` (gated models need their licence accepted on the Hub first)"
        ) from err


def _load_diffusers(model: str, device: torch.device, dtype: str, drop_t5: bool):
    from diffusers import DiffusionPipeline

    folder = local_weights(model)
    try:
        index = DiffusionPipeline.load_config(folder)
        # Components saved as absent ([null, null], e.g. SD3 without T5) must be passed as None.
        absent = {name: None for name, entry in index.items() if entry == [None, None]}
        if drop_t5 and "text_encoder_3" in index:
            absent.update(text_encoder_3=None, tokenizer_3=None)
        with warnings.catch_warnings():
            # diffusers >= 0.36 renames torch_dtype to dtype; the old name works on every version.
            warnings.simplefilter("ignore", FutureWarning)
            return DiffusionPipeline.from_pretrained(
                folder, torch_dtype=resolve_dtype(dtype, device), **absent
            )
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fix = (
            "a diffusers folder holds model_index.json and a folder per component"
            if folder == model
            else f"the cached copy is incomplete: download it again with `hf download {model}`"
        )
        raise HeadsplatError(f"could not load diffusers model {model!r}: {reason} ({fix})") from err
    except ValueError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "ValueError"
        raise HeadsplatError(f"could not load diffusers model {model!r}: {reason}") from err


def load_pipeline(
    model: str, device: str = "auto", dtype: str = "auto", drop_t5: bool = False
) -> HeadGuidancePipeline:
    """A tiny model name, a Hugging Face id (from the local HF cache) or a local diffusers folder.

    drop_t5 leaves out SD3's T5-XXL text encoder (4.7B parameters; SD3 then sees zeros in its place).
    The tiny models are always float32.
    """
    torch_device = torch.device(resolve_device(device))
    if model in TINY_MODELS:
        return HeadGuidancePipeline(
            build_tiny_pipeline(model).to(torch_device), max_sequence_length=TINY_TEXT_TOKENS
        )
    pipe = _load_diffusers(model, torch_device, dtype, drop_t5)
    return HeadGuidancePipeline(pipe.to(torch_device))

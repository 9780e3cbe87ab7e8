"""HeadHunter (arXiv 2506.10978): a greedy search for the heads whose perturbation best raises an objective.

A search is resumable: its state (SearchState) is saved as JSON after every scored head, and a resumed
search skips the work the file already holds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.attention_guidance import MODES, HeadSet
from models.errors import HeadsplatError
from pipelines.config_cli import flag, no_flag
from pipelines.files import atomic_output
from pipelines.guide.heads import head_list
from pipelines.guide.objectives import Objective
from pipelines.guide.sampling import SIZE_MULTIPLE, HeadGuidancePipeline, check_settings


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (the --seeds flag)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


@dataclass
class SearchConfig:
    """Settings of one HeadHunter search (and the search command's flags); a resumed search must use the
    same ones."""

    prompts: list[str] = field(metadata=no_flag())
    """Prompts to score on; every prompt is paired with every seed (M = prompts x seeds)."""
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata=flag(parse=parse_seeds, metavar="SEEDS", default_help="0")
    )
    """Sampling seeds, comma-separated."""
    k: int = field(default=1, metadata=flag("-k"))
    """Heads added per round (top k)."""
    rounds: int = 1
    """Greedy rounds; the result has k x rounds heads."""
    objective: str = "sharpness"
    """Objective spec, higher is better: colorfulness | sharpness | target:IMAGE | clip:MODEL[,PROCESSOR]
    (CLIP or PickScore weights)."""
    pag_scale: float | None = field(default=None, metadata=flag("--scale", metavar="SCALE"))
    """Guidance scale w during the search (None: the family default, 3 for SD3, 8 for FLUX)."""
    pag_strength: float = field(default=1.0, metadata=flag("--soft", metavar="SOFT"))
    """SoftPAG u during the search (the paper searches at u = 1)."""
    pag_mode: str = field(default="joint", metadata=flag("--mode", choices=MODES))
    """'joint' or 'image' perturbation."""
    num_inference_steps: int | None = field(default=None, metadata=flag("--steps", metavar="STEPS"))
    """Sampling steps (None: the family default, 20 for SD3, 15 for FLUX)."""
    guidance_scale: float | None = field(default=None, metadata=flag("--cfg", metavar="CFG"))
    """CFG scale (SD3) / distilled guidance (FLUX) during the search (None: 7.0 / 3.5)."""
    height: int | None = None
    """Image height in pixels, a multiple of 16 (None: the model default)."""
    width: int | None = None
    """Image width in pixels, a multiple of 16 (None: the model default)."""
    pool: str = field(default="", metadata=flag(default_help="every head"))
    """Candidate heads as a head spec ('' = every head of the model)."""
    batch_size: int = 4
    """Prompt-seed pairs sampled per transformer call."""

    def check(self) -> None:
        """A HeadsplatError for the first setting no search can use, before any model loads."""
        if not self.prompts:
            raise HeadsplatError("the search needs at least one prompt")
        if not self.seeds or any(not 0 <= seed < 2**64 for seed in self.seeds):
            raise HeadsplatError(f"--seeds must be one or more integers 0 to 2**64 - 1, got {self.seeds}")
        for name, value in (("-k", self.k), ("--rounds", self.rounds), ("--batch-size", self.batch_size)):
            if value < 1:
                raise HeadsplatError(f"{name} must be at least 1, got {value}")
        check_settings(
            scale=self.pag_scale,
            strength=self.pag_strength,
            mode=self.pag_mode,
            guidance_range=(0.0, 1.0),
            steps=self.num_inference_steps,
            cfg=self.guidance_scale,
            true_cfg=1.0,
            height=self.height,
            width=self.width,
            size_multiple=SIZE_MULTIPLE,
        )


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


def evaluate_heads(
    pipeline: HeadGuidancePipeline, heads: HeadSet, config: SearchConfig, objective: Objective
) -> float:
    """Mean objective over the config's prompt-seed pairs, sampled with `heads` perturbed."""
    pairs = [(prompt, seed) for prompt in config.prompts for seed in config.seeds]
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

    config.check()
    pipeline.pipe.set_progress_bar_config(disable=True)  # the search has its own bar
    pool = head_list(config.pool, pipeline.layout)
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


def save_search(state: SearchState, path: str | Path) -> None:
    """Write a search state as JSON, atomically (the folder must exist; 0644 under umask 022)."""
    text = json.dumps(asdict(state), indent=1)
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(text)


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

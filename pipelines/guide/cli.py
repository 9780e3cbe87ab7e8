"""`python -m pipelines.guide` (one image) and `python -m pipelines.guide search` (HeadHunter).

The flags are made from GuideConfig, SearchConfig and SearchFiles (pipelines.config_cli); the exit
codes are every headsplat tool's (pipelines.cli.run_cli): bad input is exit 2 with one error line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.errors import HeadsplatError
from pipelines.cli import check_output, run_cli
from pipelines.config_cli import add_config_arguments, config_from_args, flag
from pipelines.device import resolve_device
from pipelines.guide.image_files import image_format, save_image
from pipelines.guide.loading import load_pipeline
from pipelines.guide.objectives import make_objective
from pipelines.guide.search import SearchConfig, SearchState, load_search, save_search, search_heads
from pipelines.guide.text_to_image import GuideConfig, generate

MODEL_FLAGS = ("model", "device", "dtype", "drop_t5")
"""GuideConfig's fields that the search command shares: which model to load, where and how."""


@dataclass
class SearchFiles:
    """The search command's files: not search settings, so not part of SearchConfig or its JSON."""

    prompts_file: str
    """Text file, one prompt per line."""
    resume: bool = False
    """Continue the partial search in -o."""
    output: str = field(default="heads.json", metadata=flag("-o", "--output"))
    """Output JSON: the chosen heads, their scores and the search state (usable with --heads)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _generate_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipelines.guide",
        description="Sample an SD3/FLUX image with head-level perturbed-attention guidance "
        "(arXiv 2506.10978). Run 'python -m pipelines.guide search --help' for the HeadHunter head search.",
    )
    add_config_arguments(parser, GuideConfig)
    return parser


def _search_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipelines.guide search",
        description="HeadHunter: greedy search for the attention heads whose perturbation best raises an "
        "objective; writes the chosen heads and their scores as JSON (usable with --heads).",
    )
    add_config_arguments(parser, SearchFiles)
    add_config_arguments(parser, SearchConfig)
    add_config_arguments(parser, GuideConfig, only=MODEL_FLAGS)
    return parser


def _read_prompts(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise HeadsplatError(f"cannot read prompts file {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise HeadsplatError(
            f"prompts file {path} is not UTF-8 text (byte {err.start} is not): write one prompt per line"
        ) from err
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
    """The 'search' subcommand, from its parsed flags."""
    files = config_from_args(SearchFiles, args)
    config = config_from_args(SearchConfig, args, prompts=_read_prompts(files.prompts_file))
    config.check()
    if files.resume and Path(files.output).exists():
        state = load_search(files.output, args.model, config)
    else:
        if Path(files.output).exists() and not _is_complete_search(files.output):
            raise HeadsplatError(
                f"{files.output} holds an unfinished search: pass --resume to continue it, "
                f"or choose another -o"
            )
        state = SearchState(model=args.model, config=asdict(config))
    objective = make_objective(config.objective, device=resolve_device(args.device))
    pipeline = load_pipeline(args.model, args.device, args.dtype, args.drop_t5)
    return search_heads(pipeline, config, objective, state, save=lambda s: save_search(s, files.output))


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
    config = config_from_args(GuideConfig, args)
    config.check()
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

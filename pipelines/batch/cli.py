"""`python -m pipelines.batch manifest.jsonl -o out/`: the flags are BatchConfig's fields."""

from __future__ import annotations

import argparse
import sys

from pipelines.batch.results import STATUSES
from pipelines.batch.run import BatchConfig, run_batch
from pipelines.config_cli import add_config_arguments, config_from_args, field_docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.batch",
        description="Render every item of a manifest (.jsonl or .csv) into a folder, on this machine or a Ray "
        "cluster; out/results.jsonl records each item. Run it again to finish what failed.",
        epilog='Manifest line: {"portrait": "a.jpg", "audio": "a.wav", "output": "a.mp4", "size": 256}. '
        "Exit code 0: all items ok; 1: some failed; 2: bad manifest or flags.",
    )
    parser.add_argument("manifest", help=field_docs(BatchConfig)["manifest"])
    add_config_arguments(parser, BatchConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import run_cli

    cfg = config_from_args(BatchConfig, build_parser().parse_args(argv))

    def body() -> int:
        summary = run_batch(cfg)
        counts = {s: sum(r.status == s for r in summary.results) for s in STATUSES}
        print(
            f"{counts['ok']} ok, {counts['error']} failed, {counts['skipped']} skipped (done before) in "
            f"{summary.seconds:.1f} s; results in {summary.results_path}",
            file=sys.stderr,
        )
        return summary.exit_code

    return run_cli(
        body, interrupted="interrupted; finished items are in results.jsonl, run again to do the rest"
    )

"""Flags made from config dataclasses: types, defaults, help from field docstrings, round trips."""

import argparse
from dataclasses import dataclass, field

import pytest

from pipelines.config_cli import (
    add_config_arguments,
    config_from_args,
    config_keys,
    field_docs,
    flag,
    key_only,
    no_flag,
)


def _pair(text: str) -> tuple[float, float]:
    a, b = text.split(",")
    return float(a), float(b)


@dataclass
class Example:
    """A config like the pipelines' own."""

    prompt: str
    """What to draw."""
    image: str = field(default="portrait.jpg", metadata=flag("-s", "--image", default_help="the shipped one"))
    """Portrait photo,
    over two lines."""
    size: int | None = None
    """Render size in pixels."""
    scale: float = 1.5
    """A scale."""
    emotion: str = field(default="neutral", metadata=flag(choices=("neutral", "happy")))
    """Facial emotion."""
    still: bool = False
    """Keep the head still."""
    progress: bool = field(default=True, metadata=flag(inverse="--quiet", help="No progress bar."))
    """Show a progress bar."""
    window: tuple[float, float] = field(default=(0.0, 1.0), metadata=flag(parse=_pair, metavar="START,END"))
    """A range."""
    internal: int = field(default=7, metadata=no_flag())
    """Set by code."""
    colour: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0), metadata=key_only())
    """A manifest key without a flag."""


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="example", exit_on_error=False)
    add_config_arguments(parser, Example, **kwargs)
    return parser


def test_docstrings_under_fields_are_the_help():
    docs = field_docs(Example)
    assert docs["image"] == "Portrait photo, over two lines."
    assert docs["size"] == "Render size in pixels."
    help_text = " ".join(_parser().format_help().split())
    assert "-s IMAGE, --image IMAGE Portrait photo, over two lines. (default: the shipped one)" in help_text
    assert "--scale SCALE A scale. (default: 1.5)" in help_text
    assert "--quiet No progress bar." in help_text
    assert "--internal" not in help_text and "--colour" not in help_text


def test_defaults_round_trip_to_the_config():
    cfg = config_from_args(Example, _parser().parse_args(["--prompt", "a cat"]))
    assert cfg == Example(prompt="a cat")


def test_every_kind_of_field_parses():
    args = ["--prompt", "p", "-s", "me.png", "--size", "256", "--scale", "0.5", "--emotion", "happy"]
    args += ["--still", "--quiet", "--window", "0.2,0.8"]
    cfg = config_from_args(Example, _parser().parse_args(args), internal=3)
    assert cfg == Example("p", "me.png", 256, 0.5, "happy", True, False, (0.2, 0.8), 3, (1.0, 1.0, 1.0))


def test_bad_values_and_missing_required_flags_are_refused():
    parser = _parser()
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--prompt", "p", "--emotion", "furious"])
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--prompt", "p", "--size", "big"])
    with pytest.raises(SystemExit):  # argparse exits for a missing required flag
        parser.parse_args([])


def test_skip_only_and_groups():
    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("drivers")
    add_config_arguments(parser, Example, only=("prompt", "size", "still"), groups={"size": group})
    assert {a.dest for a in group._group_actions} == {"size"}
    assert {a.dest for a in parser._actions} == {"help", "prompt", "size", "still"}


def test_config_keys_are_the_flag_fields_with_their_types():
    keys = config_keys(Example)
    assert keys["size"] is int and keys["scale"] is float and keys["still"] is bool
    assert "internal" not in keys and keys["colour"] == tuple[float, float, float]

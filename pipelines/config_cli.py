"""Command-line flags made from a config dataclass: each config is the one source of its flags.

A field's type gives the flag's type, its default the default, and the docstring under it (the
convention every config here follows) the help text. What a type cannot say goes in the field's
metadata through `flag(...)`:

    @dataclass
    class TalkConfig:
        image: str = field(default="portrait.jpg", metadata=flag("-s", "--image"))
        \"\"\"Portrait photo.\"\"\"
        emotion: str = field(default="neutral", metadata=flag(choices=EMOTIONS))
        \"\"\"Facial emotion.\"\"\"

    add_config_arguments(parser, TalkConfig, skip=("progress",))
    cfg = config_from_args(TalkConfig, parser.parse_args(argv))

Written here rather than taken from tyro or simple-parsing: both would change the flags users and the
README already know (their spelling of booleans, optionals and tuples), and this needs about a hundred
lines of plain argparse.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Sequence

_KEY = "headsplat.cli"
_SCALARS = (int, float, str)


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line (kept in the field's metadata)."""

    names: tuple[str, ...] = ()  # e.g. ("-s", "--image"); default: --field-name
    choices: Sequence | None = None
    parse: Callable[[str], typing.Any] | None = None  # a string → value converter for argparse's `type`
    metavar: str | None = None
    default_help: str | None = None  # how the default reads in --help, when its value says it badly
    inverse: str | None = None  # a bool field that defaults True, set False by this flag ("--quiet")
    help: str | None = (
        None  # the help text, when the field's docstring does not read as one (an inverse flag)
    )
    hidden: bool = False  # neither a flag nor a manifest key (filled in by code)
    cli: bool = True  # False: a config key (a batch manifest may set it) that has no command-line flag


def flag(*names: str, **options) -> dict:
    """Field metadata for a config field's flag: `field(default=..., metadata=flag("-o", "--output"))`."""
    return {_KEY: Flag(names=names, **options)}


def no_flag() -> dict:
    """Field metadata for a field that is never a command-line flag nor a manifest key."""
    return {_KEY: Flag(hidden=True)}


def key_only() -> dict:
    """Field metadata for a config key without a flag (a tuple a manifest gives as a list, say)."""
    return {_KEY: Flag(cli=False)}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring, whitespace folded} read from the class source (docstrings under fields)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (built in an interpreter): no help text
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _base_type(hint: typing.Any) -> tuple[typing.Any, bool]:
    """(the type without None, whether None is allowed) for `int`, `int | None`, `Optional[int]`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _default(field: dataclasses.Field) -> typing.Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def cli_fields(cls: type) -> Iterable[tuple[dataclasses.Field, Flag]]:
    """The fields of `cls` that are flags or manifest keys, with how each appears."""
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(_KEY, Flag())
        if not spec.hidden:
            yield field, spec


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    groups: dict[str, argparse._ArgumentGroup] | None = None,
) -> None:
    """Add one flag per field of the dataclass `cls` (less `skip`, or just `only`) to `parser`.

    `groups` puts named fields into argument groups (e.g. the drivers). A field without a default is a
    required flag. Help is the field's docstring with its default.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    skip, only = set(skip), None if only is None else set(only)
    for field, spec in cli_fields(cls):
        if not spec.cli or field.name in skip or (only is not None and field.name not in only):
            continue
        target = (groups or {}).get(field.name, parser)
        kind, optional = _base_type(hints[field.name])
        default = _default(field)
        help_text = spec.help if spec.help is not None else docs.get(field.name, "")
        names = spec.names or ("--" + field.name.replace("_", "-"),)
        kwargs: dict[str, typing.Any] = {"dest": field.name}
        if kind is bool:
            if spec.inverse:
                names, kwargs["action"] = (spec.inverse,), "store_false"
            else:
                kwargs["action"] = "store_true"
            target.add_argument(*names, help=help_text, default=default, **kwargs)
            continue
        if spec.parse is not None:
            kwargs["type"] = spec.parse
        elif kind in _SCALARS:
            kwargs["type"] = kind
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: give flag(parse=...) for a {kind!r} field")
        if spec.choices is not None:
            kwargs["choices"] = tuple(spec.choices)
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            shown = spec.default_help if spec.default_help is not None else default
            if shown is not None and not (optional and default is None and spec.default_help is None):
                help_text = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        target.add_argument(*names, help=help_text, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, **overrides) -> typing.Any:
    """An instance of `cls` from parsed flags (fields the parser did not add keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def config_keys(cls: type) -> dict[str, typing.Any]:
    """{field name: type without None} of the fields that are flags or key_only(): what a manifest may set."""
    hints = typing.get_type_hints(cls)
    return {field.name: _base_type(hints[field.name])[0] for field, _ in cli_fields(cls)}

"""The manifest: which pipelines an item can run, reading .jsonl/.csv rows into checked `BatchItem`s.

A row's options are the pipeline config's flags (`pipelines.config_cli.config_keys`), so the manifest keys,
the pipeline's command-line flags and the app's defaults all come from one config per pipeline. Every
problem of every row is collected before anything runs: a `ManifestError` lists them all at once.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import HeadsplatError
from pipelines.config_cli import config_keys

RESULTS_NAME = "results.jsonl"
CACHE_NAME = ".cache"
#: Folder inside the output folder that holds each running item's temporary folder.
TMP_NAME = ".tmp"


# ------------------------------------------------------------------------------------------------
# Pipelines a batch item can run
@dataclass(frozen=True)
class PipelineEntry:
    """How a manifest item maps onto one pipeline's config and entry point."""

    module: str
    """Module holding the config class and the function."""
    config_class: str
    """Name of the dataclass config in `module`."""
    function: str
    """Name of the function that runs one config."""
    inputs: tuple[str, ...]
    """Manifest keys that are input files (resolved against the manifest's folder)."""
    output_is_folder: bool
    """True when `output` names a folder the pipeline fills, False for one file."""
    output_suffix: str = ""
    """The suffix a file output must have."""
    folder_files: tuple[str, ...] = ()
    """The files a folder output may receive (checked before the item runs, cleaned up after a kill)."""


#: Config fields a manifest may not set: the batch owns them (or they are the inputs under another name).
RESERVED_FIELDS = ("image", "output", "device", "progress", "cache_dir", "save_motion")
PIPELINES: dict[str, PipelineEntry] = {
    "talk": PipelineEntry(
        "pipelines.talk", "TalkConfig", "talk", ("portrait", "audio", "text", "motion", "driving"),
        output_is_folder=False, output_suffix=".mp4",
    ),
    "avatar3d": PipelineEntry(
        "pipelines.avatar3d", "Avatar3DConfig", "avatar3d",
        ("portrait", "avatar", "audio", "text", "motion", "driving"),
        output_is_folder=True,
        folder_files=("avatar.safetensors", "head.ply", "head.splat", "turntable.mp4", "talk3d.mp4"),
    ),
}  # fmt: skip
#: Inputs that are text, not files.
TEXT_INPUTS = ("text",)


def unavailable(pipeline: str) -> str | None:
    """Why the pipeline cannot run in this build (None when it can)."""
    entry = PIPELINES[pipeline]
    try:
        importlib.import_module(entry.module)
    except ImportError as err:
        message = f"{pipeline} pipeline not available in this build"
        # A module that is there but cannot import one of its own dependencies: say which.
        return message if err.name == entry.module else f"{message} ({err})"
    return None


def config_class(pipeline: str) -> type | None:
    """The pipeline's config dataclass, or None when its module is not part of this build."""
    if unavailable(pipeline) is not None:
        return None
    entry = PIPELINES[pipeline]
    return getattr(importlib.import_module(entry.module), entry.config_class)


def option_types(pipeline: str) -> dict[str, typing.Any] | None:
    """Manifest option name → its type: the pipeline config's flags less the batch's own fields and the
    inputs (None when the pipeline is unavailable)."""
    config = config_class(pipeline)
    if config is None:
        return None
    inputs = {"image" if name == "portrait" else name for name in PIPELINES[pipeline].inputs}
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    # config_keys gives each type without None; a field whose default is None also takes null (its default).
    return {
        name: kind | None if defaults[name] is None else kind
        for name, kind in config_keys(config).items()
        if name not in RESERVED_FIELDS and name not in inputs
    }


# ------------------------------------------------------------------------------------------------
# Items
@dataclass
class BatchItem:
    """One clip to make: a pipeline, its inputs and options, and where its output goes."""

    output: str
    """The output's name inside the output folder (a file for talk, a folder for avatar3d)."""
    pipeline: str = "talk"
    """Which pipeline makes it: talk or avatar3d."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Input name → absolute path (or the text itself for `text`)."""
    options: dict[str, typing.Any] = field(default_factory=dict)
    """Config field → value, already checked against the pipeline's config."""
    line: int = 0
    """Line of the manifest the item came from (1-based; CSV counts the header)."""

    @property
    def fingerprint(self) -> str:
        """A hash of what the item asks for: a changed item is rendered again on resume."""
        spec = {
            "pipeline": self.pipeline,
            "inputs": self.inputs,
            "options": self.options,
            "output": self.output,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def portrait_key(self) -> tuple:
        """Items with the same key share one built avatar (the talk avatar cache is keyed the same way)."""
        if self.pipeline != "talk":
            return ("item", self.output)  # avatar3d keeps no avatar cache: nothing to share
        portrait = self.inputs.get("portrait", "<default>")
        return (portrait, self.options.get("size"), self.options.get("face_index"))


def written_files(item: BatchItem) -> list[str]:
    """The files the item may write, relative to the output folder (POSIX separators)."""
    entry = PIPELINES[item.pipeline]
    if not entry.output_is_folder:
        return [Path(item.output).as_posix()]
    names = list(entry.folder_files)
    if item.pipeline == "avatar3d" and "avatar" in item.inputs:
        names.remove("avatar.safetensors")  # a reused avatar is read, not written again
    return [(Path(item.output) / name).as_posix() for name in names]


def apply_default_seed(items: list[BatchItem], seed: int) -> None:
    """Give `seed` to the items that set none of their own (and whose pipeline has one)."""
    for item in items:
        known_options = option_types(item.pipeline)
        if known_options is not None and "seed" in known_options:
            item.options.setdefault("seed", int(seed))


class ManifestError(HeadsplatError):
    """A manifest that cannot be run as it is; `problems` holds one line per bad item."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path.name}: {len(problems)} problem(s); fix them and run again:\n{shown}{more}")


# ------------------------------------------------------------------------------------------------
# Rows and their values
class _CsvText(str):
    """A CSV cell: text that may stand for a number or a boolean."""


def _read_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line, raw row) pairs; a row is a dict, or a string saying why the line is not one."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise HeadsplatError(f"manifest {path.name} is not UTF-8 text ({err})") from err
    if suffix in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield number, f"not valid JSON ({err.msg} at column {err.colno})"
                continue
            yield (
                number,
                row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}",
            )
    elif suffix == ".csv":
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if not header:
            return
        header = [h.strip() for h in header]
        for number, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield number, f"{len(cells)} fields, the header has {len(header)}"
                continue
            # CSV has no null: an empty cell means "not given", and every value arrives as text.
            yield number, {k: _CsvText(v.strip()) for k, v in zip(header, cells) if v.strip()}
    else:
        raise HeadsplatError(f"manifests are .jsonl or .csv files; got {path.name!r}")


def _convert(value: typing.Any, kind: typing.Any) -> typing.Any:
    """`value` as `kind` (bool, int, float, str, Optional[...], tuple[float, ...]); ValueError if it is not one."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, kind
        return _convert(value, inner[0])
    text = isinstance(value, _CsvText)
    if kind is bool:
        if text and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, bool):
            return value
        raise ValueError("expected true or false")
    if kind is int:
        if text:
            try:
                return int(value)
            except ValueError:
                raise ValueError("expected a whole number") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError("expected a whole number")
    if kind is float:
        if text:
            try:
                number = float(value)
            except ValueError:
                raise ValueError("expected a number") from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise ValueError("expected a number")
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if kind is str:
        if isinstance(value, str):
            return str(value)
        raise ValueError("expected text")
    if origin is tuple:
        parts = value.replace(",", " ").split() if text else value
        if not isinstance(parts, list) or len(parts) != len(args):
            raise ValueError(f"expected a list of {len(args)} values")
        return tuple(_convert(_CsvText(p) if text else p, a) for p, a in zip(parts, args))
    raise AssertionError(f"no manifest conversion for {kind}")


def _kind_name(kind: typing.Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _check_output_name(name: str, entry: PipelineEntry) -> str | None:
    """Why `name` is not a usable output name inside the output folder (None when it is)."""
    path = Path(name)
    if not name.strip():
        return "output is empty"
    if path.is_absolute() or ".." in path.parts:
        return f"output {name!r} must be a name inside the output folder (no absolute path, no '..')"
    # "." (or "./") has no parts: a folder pipeline then writes into the output folder itself.
    if path.parts and path.parts[0] in (RESULTS_NAME, CACHE_NAME, TMP_NAME):
        return f"output {name!r} is reserved for the batch's own files"
    if entry.output_suffix and path.suffix.lower() != entry.output_suffix:
        return f"output {name!r} must end in {entry.output_suffix}"
    if entry.output_is_folder and path.suffix:
        return f"output {name!r} names a folder for this pipeline; drop the {path.suffix} suffix"
    return None


def parse_item(row: dict, line: int, base: Path) -> tuple[BatchItem | None, list[str]]:
    """One manifest row → a checked BatchItem, or None and the reasons it is not one."""
    problems: list[str] = []
    row = dict(row)
    pipeline = row.pop("pipeline", "talk")
    if pipeline not in PIPELINES:
        return None, [f"pipeline must be one of {', '.join(PIPELINES)}; got {pipeline!r}"]
    entry = PIPELINES[pipeline]
    output = row.pop("output", None)
    if output is None:
        problems.append('no output name (add an "output" key)')
    elif not isinstance(output, str):
        problems.append(f"output must be text; got {output!r}")
    elif (why := _check_output_name(output, entry)) is not None:
        problems.append(why)
    known_options = option_types(pipeline)
    inputs: dict[str, str] = {}
    options: dict[str, typing.Any] = {}
    for key, value in row.items():
        if key in entry.inputs:
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{key} must be a file path (text); got {value!r}")
            elif key in TEXT_INPUTS:
                inputs[key] = str(value)
            else:
                path = Path(os.path.expanduser(value))
                inputs[key] = str(path if path.is_absolute() else (base / path).resolve())
        elif known_options is None:
            # The pipeline is not in this build: keep the options as given; the item fails on its own.
            options[key] = value if not isinstance(value, _CsvText) else str(value)
        elif key in known_options:
            try:
                options[key] = _convert(value, known_options[key])
            except ValueError as err:
                problems.append(f"{key}: {err} ({_kind_name(known_options[key])}); got {value!r}")
        else:
            known = [*entry.inputs, *known_options, "pipeline", "output"]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint} for a {pipeline} item")
    if problems:
        return None, problems
    return BatchItem(
        output=str(Path(output)), pipeline=pipeline, inputs=inputs, options=options, line=line
    ), []


def load_manifest(path: str | os.PathLike) -> list[BatchItem]:
    """Read and check a .jsonl or .csv manifest; a ManifestError lists every bad item at once."""
    from pipelines.files import require_file

    path = Path(require_file(path, "manifest")).resolve()
    items: list[BatchItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    files: dict[str, int] = {}
    for line, row in _read_rows(path):
        if isinstance(row, str):
            problems.append(f"line {line}: {row}")
            continue
        item, why = parse_item(row, line, path.parent)
        problems.extend(f"line {line}: {w}" for w in why)
        if item is None:
            continue
        # Case-folded: on macOS and Windows "A.mp4" and "a.mp4" are the same file.
        key = item.output.casefold()
        if key in seen:
            problems.append(f"line {line}: output {item.output!r} is also the output of line {seen[key]}")
            continue
        # Different output names can still meet in one file: a folder output "." and a clip "head.ply".
        clash = next((f for f in written_files(item) if f.casefold() in files), None)
        if clash is not None:
            problems.append(f"line {line}: output {item.output!r} writes {clash}, which line "
                            f"{files[clash.casefold()]} writes too")  # fmt: skip
            continue
        seen[key] = line
        files.update((f.casefold(), line) for f in written_files(item))
        items.append(item)
    if problems:
        raise ManifestError(path, problems)
    if not items:
        raise HeadsplatError(f"manifest {path.name} has no items")
    return items

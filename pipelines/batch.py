"""Batch: render many clips from one manifest, on this machine or on a Ray cluster.

    python -m pipelines.batch manifest.jsonl -o out/                   # a process pool sized to the machine
    python -m pipelines.batch manifest.csv -o out/ --workers 4
    python -m pipelines.batch manifest.jsonl -o out/ --engine ray --ray-address auto

A manifest is JSONL (one object per line) or CSV (a header row of keys; empty cells are not given). Each
item names its `pipeline` (talk, the default, or avatar3d), its inputs (`portrait`, `audio`, `text`,
`motion`, `driving`; avatar3d also `avatar`), its options (the pipeline config's fields: `fps`, `size`,
`steps`, `seed`, `emotion`, ...) and its `output`: a file name (talk, `.mp4`) or a folder name (avatar3d)
inside the output folder. Relative input paths resolve against the manifest's folder.

    {"portrait": "alice.jpg", "audio": "hello.wav", "output": "alice_hello.mp4", "size": 256}
    {"pipeline": "avatar3d", "portrait": "bob.jpg", "output": "bob3d", "num_gaussians": 50000}

`out/results.jsonl` (rewritten atomically whenever an item finishes) records each item's status
(ok, error, skipped; pending until it has run), timings, outputs and error message. Running the same
command again skips the items whose results say ok and whose outputs exist, and renders the rest.
Exit code: 0 when every item succeeded, 1 when any failed, 2 for a bad manifest or bad flags, 130 after
Ctrl-C and 143 after SIGTERM (running items are stopped and their half-written files removed).

An item may only write inside the output folder and never over one of its own inputs: an output that
leads elsewhere through a link in the output folder, or that is one of the item's inputs, fails the item.
Each item gets its own temporary folder (out/.tmp/item-*, its TMPDIR), removed when the item ends however
it ended; a stopped item's hidden temporary outputs are removed with it, and so are any an earlier,
killed run left behind.

On a Ray cluster every node needs headsplat installed (`pip install 'headsplat[dist]'`) and must see the
manifest's inputs and the output folder at the same paths (a shared filesystem): tasks read the inputs
and write their outputs themselves, as local workers do.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
import typing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from models.errors import HeadsplatError

RESULTS_NAME = "results.jsonl"
CACHE_NAME = ".cache"
#: Folder inside the output folder that holds each running item's temporary folder.
TMP_NAME = ".tmp"
ENGINES = ("local", "ray")
STATUSES = ("pending", "ok", "error", "skipped")
#: Resident memory one worker needs at worst (512² talk: torch, the head model, an avatar, the encoder).
WORKER_MEMORY_BYTES = 2 << 30
AVATAR3D_MISSING = "avatar3d pipeline not available in this build"
#: What a local worker says when it begins an item.
STARTED = "started"
#: With --item-timeout, how long a local worker may take to begin an item it was handed (its start-up:
#: importing torch and the pipeline, starting CUDA), which the item's own clock does not count.
WORKER_START_SECONDS = 300.0


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
    missing_message: str = ""
    """Per-item error when the pipeline's module is not in this build."""
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
        output_is_folder=True, missing_message=AVATAR3D_MISSING,
        folder_files=("avatar.safetensors", "head.ply", "head.splat", "turntable.mp4", "talk3d.mp4"),
    ),
}  # fmt: skip
#: Inputs that are text, not files.
TEXT_INPUTS = ("text",)


def _unavailable(pipeline: str) -> str | None:
    """Why the pipeline cannot run in this build (None when it can)."""
    entry = PIPELINES[pipeline]
    try:
        importlib.import_module(entry.module)
    except ImportError as err:
        message = entry.missing_message or f"{pipeline} pipeline not available in this build"
        # A module that is there but cannot import one of its own dependencies: say which.
        return message if err.name == entry.module else f"{message} ({err})"
    return None


def _config_class(pipeline: str) -> type | None:
    """The pipeline's config dataclass, or None when its module is not part of this build."""
    if _unavailable(pipeline) is not None:
        return None
    entry = PIPELINES[pipeline]
    return getattr(importlib.import_module(entry.module), entry.config_class)


def option_types(pipeline: str) -> dict[str, type] | None:
    """Manifest option name → its type, read off the pipeline's config (None when it is unavailable)."""
    config = _config_class(pipeline)
    if config is None:
        return None
    hints = typing.get_type_hints(config)
    inputs = {"image" if name == "portrait" else name for name in PIPELINES[pipeline].inputs}
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(config)
        if f.name not in RESERVED_FIELDS and f.name not in inputs
    }


# ------------------------------------------------------------------------------------------------
# Manifest
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


class ManifestError(HeadsplatError):
    """A manifest that cannot be run as it is; `problems` holds one line per bad item."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path.name}: {len(problems)} problem(s); fix them and run again:\n{shown}{more}")


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


class _CsvText(str):
    """A CSV cell: text that may stand for a number or a boolean."""


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


# ------------------------------------------------------------------------------------------------
# Where an item writes, and what it leaves behind when it is stopped
#: A temporary file beside an output: `.STEM.XXXXXXXX.SUFFIX` (pipelines.files.atomic_output) or
#: `.NAME.XXXXXXXX.tmp` (the .ply/.splat writer); the middle is tempfile's random part.
_TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)")
#: A built avatar in the batch's own cache (pipelines.talk names them by a 24-digit hash).
_CACHE_ENTRY = re.compile(r"[0-9a-f]{24}\.safetensors")


def written_files(item: BatchItem) -> list[str]:
    """The files the item may write, relative to the output folder (POSIX separators)."""
    entry = PIPELINES[item.pipeline]
    if not entry.output_is_folder:
        return [Path(item.output).as_posix()]
    names = list(entry.folder_files)
    if item.pipeline == "avatar3d" and "avatar" in item.inputs:
        names.remove("avatar.safetensors")  # a reused avatar is read, not written again
    return [(Path(item.output) / name).as_posix() for name in names]


def _inside(path: str | os.PathLike, root: Path) -> bool:
    """True when `path`, with every link followed, is `root` (a real path) or lies inside it."""
    return Path(os.path.realpath(path)).is_relative_to(root)


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # a hard link, or the same file seen through another mount
    except OSError:
        return False  # one of them does not exist (yet)


def check_item_output(item: BatchItem, out: Path) -> None:
    """A HeadsplatError when the item would write outside `out` (through a link inside it) or over
    one of its own inputs; checked before anything is made for the item."""
    root = Path(os.path.realpath(out))
    entry = PIPELINES[item.pipeline]
    target = out / item.output
    for path in [target, *(out / f for f in written_files(item))]:
        real = Path(os.path.realpath(path))
        if real == root and path == target and entry.output_is_folder:
            continue  # a folder output "." is the output folder itself
        if real == root or not real.is_relative_to(root):
            raise HeadsplatError(
                f"output {item.output!r} leads outside the output folder (to {real}, through a link); "
                "remove the link or pick another name"
            )
    for name in written_files(item):
        for key, value in item.inputs.items():
            if key not in TEXT_INPUTS and _same_file(out / name, value):
                raise HeadsplatError(
                    f"output {item.output!r} would overwrite its {key} input {value}; write it under another name"
                )


def _remove_temp_files(folder: Path, root: Path, wanted: Callable[[str], bool]) -> list[Path]:
    """Remove the hidden temporary files in `folder` whose finished name `wanted` accepts; returns them.

    Nothing is touched unless the folder really lies inside `root` (the output folder's real path):
    a link in the output folder never leads the clean-up elsewhere.
    """
    if not _inside(folder, root):
        return []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []  # not made yet, or not a folder
    removed = []
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None:
            continue
        names = {match["stem"] + match["suffix"]}
        if match["suffix"] == ".tmp":
            names.add(match["stem"])
        if any(wanted(n) for n in names) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def remove_leftovers(out: Path, items: Iterable[BatchItem], results: bool = False) -> list[Path]:
    """Remove the hidden temporary files the items' outputs (and with `results`, results.jsonl) left
    in `out` when their writer was killed; returns what was removed. Only call it while none of these
    items runs: each output belongs to one item, so no other item's files are touched."""
    root = Path(os.path.realpath(out))
    by_folder: dict[Path, set[str]] = {}
    for item in items:
        for name in written_files(item):
            path = out / name
            by_folder.setdefault(path.parent, set()).add(path.name)
    if results:
        by_folder.setdefault(out, set()).add(RESULTS_NAME)
    removed = []
    for folder, names in by_folder.items():
        removed += _remove_temp_files(folder, root, names.__contains__)
    return removed


def _remove_tree(path: Path) -> None:
    """Remove a folder and what is in it (a link is removed, not followed); missing is fine."""
    if path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _temp_folder(folder: str | None) -> Iterator[None]:
    """Make `folder` this process's temporary folder (tempfile and, through TMPDIR, programs it starts)."""
    if folder is None:
        yield
        return
    names = ("TMPDIR", "TEMP", "TMP")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = tempfile.tempdir
    tempfile.tempdir = folder
    os.environ.update(dict.fromkeys(names, folder))
    try:
        yield
    finally:
        tempfile.tempdir = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _signals_deferred(raise_after: bool = True) -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (stopping workers and removing their files is not
    cut short by a second Ctrl-C); a signal that came meanwhile is raised afterwards if `raise_after`
    (not when the block cleans up after an interruption already on its way out)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught and raise_after:
        signal.raise_signal(caught[0])


# ------------------------------------------------------------------------------------------------
# One item (runs inside a worker process or a Ray task)
@dataclass
class ItemResult:
    """What happened to one item: a row of results.jsonl."""

    output: str
    """The item's output name (its key in the manifest)."""
    line: int
    """Manifest line of the item."""
    pipeline: str
    """talk or avatar3d."""
    status: str = "pending"
    """pending, ok, error or skipped (done by an earlier run)."""
    outputs: list[str] = field(default_factory=list)
    """Files written, relative to the output folder."""
    seconds: float = 0.0
    """Wall time of the item, seconds (of the run that made it, for skipped items; 0 until it has run).
    A stopped item's counts from when its worker began it to when it was stopped."""
    started: str | None = None
    """When it started (UTC, ISO 8601)."""
    finished: str | None = None
    """When it finished (UTC, ISO 8601)."""
    error: str | None = None
    """Why it failed, one readable line."""
    detail: str | None = None
    """The traceback of an unexpected failure (not of the user's mistakes)."""
    worker: str | None = None
    """Which worker ran it (host:pid)."""
    fingerprint: str = ""
    """Hash of the item's spec: results of a changed item are not reused."""

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, row: dict) -> ItemResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def item_config(item: BatchItem, out_dir: Path, device: str, cache_dir: str | None):
    """The pipeline config of one item, with inputs, output path, device and avatar cache filled in."""
    config = _config_class(item.pipeline)
    if config is None:
        raise HeadsplatError(_unavailable(item.pipeline))
    values = dict(item.options)
    for key, value in item.inputs.items():
        values["image" if key == "portrait" else key] = value
    values["output"] = str(out_dir / item.output)
    values["device"] = device
    values["progress"] = False
    names = {f.name for f in dataclasses.fields(config)}
    if "cache_dir" in names:
        values["cache_dir"] = cache_dir
    return config(**values)


def run_item(item: BatchItem, out_dir: str, device: str = "auto", cache_dir: str | None = None) -> ItemResult:
    """Make one item; never raises: a failure is an `error` result with a readable message."""
    import socket

    out = Path(out_dir)
    result = ItemResult(item.output, item.line, item.pipeline, fingerprint=item.fingerprint)
    result.started, result.worker = _now(), f"{socket.gethostname()}:{os.getpid()}"
    start = time.perf_counter()
    try:
        entry = PIPELINES[item.pipeline]
        check_item_output(item, out)  # before any folder is made: a link must not lead the item elsewhere
        cfg = item_config(item, out, device, cache_dir)
        target = out / item.output
        (target if entry.output_is_folder else target.parent).mkdir(parents=True, exist_ok=True)
        written = getattr(importlib.import_module(entry.module), entry.function)(cfg)
        paths = written.values() if isinstance(written, dict) else [written]
        result.outputs = sorted(Path(p).resolve().relative_to(out.resolve()).as_posix() for p in paths)
        result.status = "ok"
    except HeadsplatError as err:
        result.status, result.error = (
            "error",
            str(err).strip().splitlines()[0] if str(err).strip() else "failed",
        )
    except Exception as err:  # one bad item never stops the batch: keep the traceback for the report
        result.status, result.error = "error", f"{type(err).__name__}: {err}".splitlines()[0]
        result.detail = traceback.format_exc()
    result.seconds = round(time.perf_counter() - start, 3)
    result.finished = _now()
    return result


def _limit_threads(threads: int) -> None:
    """Make this process use `threads` CPU threads in torch, numba and BLAS (workers × threads ≈ cores)."""
    # torch, numba and the BLAS libraries read these when they start, so a fresh worker need not import
    # them here; a reused one (a Ray worker) that already has them is told directly.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


# ------------------------------------------------------------------------------------------------
# Results manifest
class ResultsLog:
    """results.jsonl: one row per item in manifest order, rewritten atomically whenever rows change."""

    def __init__(self, path: Path, items: list[BatchItem], previous: dict[str, ItemResult]):
        self.path = path
        self.rows: dict[str, ItemResult] = {}
        for item in items:
            self.rows[item.output] = ItemResult(
                item.output, item.line, item.pipeline, fingerprint=item.fingerprint
            )
        self.previous = previous

    @staticmethod
    def read(path: Path) -> dict[str, ItemResult]:
        """Rows of an earlier run by output name (empty when there is none or it cannot be read)."""
        rows: dict[str, ItemResult] = {}
        if not path.is_file():
            return rows
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, AttributeError):
                row = ItemResult.from_json(json.loads(line))
                rows[row.output] = row
        return rows

    def done_before(self, item: BatchItem, out_dir: Path) -> ItemResult | None:
        """The earlier ok row of an unchanged item whose outputs all exist, else None."""
        old = self.previous.get(item.output)
        if old is None or old.status not in ("ok", "skipped") or old.fingerprint != item.fingerprint:
            return None
        if not old.outputs or not all((out_dir / p).is_file() for p in old.outputs):
            return None
        return old

    def update(self, results: Iterable[ItemResult]) -> None:
        for result in results:
            assert result.output in self.rows, result.output
            self.rows[result.output] = result
        self.write()

    def write(self) -> None:
        from pipelines.files import atomic_output

        with atomic_output(self.path) as tmp:
            tmp.write_text(
                "".join(json.dumps(r.to_json()) + "\n" for r in self.rows.values()), encoding="utf-8"
            )

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for row in self.rows.values():
            counts[row.status] += 1
        return counts


# ------------------------------------------------------------------------------------------------
# Scheduling shared by both engines
class PortraitScheduler:
    """Hands out items so each distinct avatar is built once: the first item of a portrait runs alone;
    the others wait until it is done and then find the avatar in the on-disk cache."""

    def __init__(self, items: list[BatchItem]):
        groups: dict[tuple, deque[BatchItem]] = {}
        for item in items:
            groups.setdefault(item.portrait_key, deque()).append(item)
        self.ready: deque[BatchItem] = deque(g.popleft() for g in groups.values())
        self.waiting = {key: g for key, g in groups.items() if g}
        self.running = 0

    def __bool__(self) -> bool:
        return bool(self.ready or self.waiting or self.running)

    def take(self) -> BatchItem | None:
        if not self.ready:
            return None
        self.running += 1
        return self.ready.popleft()

    def finished(self, item: BatchItem) -> None:
        self.running -= 1
        # The rest of this portrait's items go first: its avatar is fresh in the disk cache.
        self.ready.extendleft(reversed(self.waiting.pop(item.portrait_key, deque())))


# ------------------------------------------------------------------------------------------------
# Local engine: worker processes
def default_workers(cpus: int | None = None, memory_bytes: int | None = None) -> int:
    """Workers for this machine: one per core, as many as memory holds (WORKER_MEMORY_BYTES each)."""
    cpus = cpus or _cpu_count()
    memory_bytes = memory_bytes if memory_bytes is not None else _available_memory()
    by_memory = max(1, memory_bytes // WORKER_MEMORY_BYTES) if memory_bytes else cpus
    return int(max(1, min(cpus, by_memory)))


def _cpu_count() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    return os.cpu_count() or 1


def _available_memory() -> int:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 0


def import_pipeline(item: BatchItem) -> None:
    """Import the item's pipeline (torch, the models): a worker does this before the item's clock starts."""
    importlib.import_module(PIPELINES[item.pipeline].module)


def _thread_progress_lock() -> None:
    """Give tqdm a thread lock in this process instead of its default, which holds a multiprocessing
    semaphore: a worker killed mid-item would leak it, and Python would warn about it at exit."""
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())


def _worker_main(conn, threads: int, gpu: str | None, runner: Callable, warm_up: Callable | None) -> None:
    """A worker process: receive (item, args, temporary folder), send STARTED and then the result of
    `runner(item, *args)`, until it gets None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    with contextlib.suppress(AttributeError, OSError):
        # A process group of its own: the parent stops the worker with what it started (ffmpeg, espeak).
        os.setpgrp()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _limit_threads(threads)
    _thread_progress_lock()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        item, args, temp = task
        if warm_up is not None:
            with contextlib.suppress(Exception):  # the item itself reports what cannot be imported
                warm_up(item)
        conn.send(STARTED)  # the item's clock starts now, not while this process was still importing
        with _temp_folder(temp):
            result = runner(item, *args)
        conn.send(result)


class _Worker:
    """One worker process and the item it is making."""

    def __init__(self, ctx, number: int, threads: int, gpu: str | None, runner: Callable, warm_up):
        self.number = number
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, threads, gpu, runner, warm_up),
            name=f"batch-worker-{number}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.item: BatchItem | None = None
        self.temp: Path | None = None
        """The item's own temporary folder (removed when the item ends)."""
        self.started: str | None = None
        self.handed = 0.0
        """time.monotonic() when the worker was handed the item."""
        self.began: float | None = None
        """time.monotonic() when the worker began the item (None until it says so)."""
        self.retired = False

    def give(self, item: BatchItem, args: tuple, temp_root: Path) -> None:
        self.item, self.started, self.handed, self.began = item, _now(), time.monotonic(), None
        self.temp = Path(tempfile.mkdtemp(prefix="item-", dir=temp_root))
        with contextlib.suppress(OSError):  # a worker dead by now is caught by the caller
            self.conn.send((item, args, str(self.temp)))

    def deadline(self, timeout: float | None) -> float:
        """When the item is stopped: `timeout` after the worker began it (a stuck start-up ends too)."""
        if timeout is None:
            return math.inf
        return self.handed + WORKER_START_SECONDS if self.began is None else self.began + timeout

    def timeout_message(self, timeout: float) -> str:
        if self.began is None:
            return f"stopped: its worker had not begun it after {WORKER_START_SECONDS:g} s of start-up"
        return _timeout_message(timeout)

    def elapsed(self) -> float:
        return 0.0 if self.began is None else round(time.monotonic() - self.began, 3)

    def receive(self) -> ItemResult | None:
        """The item's result if it has arrived (None otherwise); notes when the worker began the item."""
        with contextlib.suppress(EOFError, OSError):  # it died while sending: a crash, seen by the caller
            while self.conn.poll():
                message = self.conn.recv()
                if isinstance(message, str) and message == STARTED:
                    self.began, self.started = time.monotonic(), _now()
                else:
                    return message
        return None

    def kill(self) -> None:
        """Stop the worker and everything it started, now; then wait for it."""
        # Only while it is alive (not yet waited for), so its id cannot belong to another process.
        if self.process.is_alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the worker leads its own process group
            except (AttributeError, OSError):  # no process groups here, or it has not made its own yet
                with contextlib.suppress(OSError):
                    self.process.kill()
        self.process.join()

    def end_item(self, out: Path | None, stopped: bool) -> None:
        """Forget the item; remove its temporary folder and, when it was `stopped` (killed, or its worker
        died), the half-written outputs it left."""
        if stopped and out is not None and self.item is not None:
            remove_leftovers(out, [self.item])
        if self.temp is not None:
            _remove_tree(self.temp)
        self.item = self.temp = None

    def close(self) -> None:
        """Let an idle worker exit (stop it if it does not), and free the pipe and process handles."""
        if self.process.is_alive() and not self.retired:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()
        self.conn.close()
        with contextlib.suppress(ValueError):
            self.process.close()


def _failed(item: BatchItem, started: str | None, error: str, seconds: float = 0.0) -> ItemResult:
    return ItemResult(
        item.output, item.line, item.pipeline, status="error", seconds=seconds, started=started or _now(),
        finished=_now(), error=error, fingerprint=item.fingerprint,
    )  # fmt: skip


def _timeout_message(seconds: float) -> str:
    return f"stopped after {seconds:g} s (--item-timeout); give it more time or a shorter driver"


def _crash_result(item: BatchItem, exitcode: int | None, started: str | None, seconds: float) -> ItemResult:
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-exitcode).name}"
    hint = "; it may have run out of memory (try fewer --workers)" if exitcode == -signal.SIGKILL else ""
    return _failed(item, started, f"the worker process died while making this item ({how}){hint}", seconds)


def _temp_root(out: Path) -> Path:
    """out/.tmp, made fresh (a link there is replaced by a folder)."""
    root = out / TMP_NAME
    if root.is_symlink():
        root.unlink()
    root.mkdir(exist_ok=True)
    return root


def run_local(
    items: list[BatchItem],
    args: tuple,
    workers: int,
    threads: int,
    on_result: Callable[[list[ItemResult]], None],
    gpus: int = 0,
    runner: Callable = run_item,
    item_timeout: float | None = None,
    warm_up: Callable[[BatchItem], None] | None = import_pipeline,
) -> None:
    """Run `runner(item, *args)` for every item in `workers` spawned processes; results go to `on_result`.

    `args` starts with the output folder. Each item runs with its own temporary folder (out/.tmp/item-*),
    removed when the item ends. A worker calls `warm_up(item)` before it tells the parent it has begun the
    item, so `item_timeout` (seconds) does not count its start-up. A worker that dies (segfault,
    out-of-memory kill) or runs past `item_timeout` fails only its own item and is replaced; the hidden
    temporary files of the item's outputs are removed. On any exit (Ctrl-C, SIGTERM) running workers are
    stopped with everything they started, and their items' temporary files removed.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # fork would copy the parent's threads and CUDA state
    out = Path(args[0])
    scheduler = PortraitScheduler(items)
    pool: list[_Worker] = []
    retired: list[_Worker] = []
    spawned = 0

    def spawn() -> _Worker:
        nonlocal spawned
        gpu = str(spawned % gpus) if gpus else None
        spawned += 1
        return _Worker(ctx, spawned, threads, gpu, runner, warm_up)

    temp_root = _temp_root(out)
    interrupted = True  # until the loop is done: Ctrl-C, SIGTERM or an error stops every worker at once
    try:
        for _ in range(min(workers, len(items))):
            pool.append(spawn())
        while scheduler:
            for i, worker in enumerate(pool):
                if worker.item is None and not worker.process.is_alive():
                    worker.close()
                    pool[i] = worker = spawn()  # it died between items: start another
                if worker.item is None and (item := scheduler.take()) is not None:
                    worker.give(item, args, temp_root)
            busy = [w for w in pool if w.item is not None]
            assert busy, "items are waiting but none is running"
            soonest = min(w.deadline(item_timeout) for w in busy) - time.monotonic()
            wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy],
                timeout=None if math.isinf(soonest) else max(0.0, soonest),
            )
            finished: list[ItemResult] = []
            for worker in busy:
                item = worker.item
                result = worker.receive()
                stopped = result is None
                if result is None and worker.process.is_alive():
                    if time.monotonic() < worker.deadline(item_timeout):
                        continue  # nothing from it yet: still working (or still starting up)
                    worker.kill()  # hung or too slow: its item fails, a fresh worker takes over
                    result = _failed(
                        item, worker.started, worker.timeout_message(item_timeout), worker.elapsed()
                    )
                if result is None:
                    worker.process.join()
                    result = _crash_result(item, worker.process.exitcode, worker.started, worker.elapsed())
                worker.end_item(out, stopped)
                scheduler.finished(item)
                finished.append(result)
            if finished:
                on_result(finished)
            if not scheduler.ready and not scheduler.waiting:
                # Nothing left to hand out: let idle workers exit now, so their memory is freed early.
                for worker in [w for w in pool if w.item is None]:
                    with contextlib.suppress(OSError):
                        worker.conn.send(None)
                    worker.retired = True
                    retired.append(worker)
                pool = [w for w in pool if w.item is not None]
        interrupted = False
    finally:
        with _signals_deferred(raise_after=not interrupted):
            for worker in pool + retired:
                if interrupted or worker.item is not None:
                    worker.kill()
                if worker.item is not None:  # stopped mid-item: remove what it left
                    worker.end_item(out, stopped=True)
                worker.close()
            _remove_tree(temp_root)


# ------------------------------------------------------------------------------------------------
# Ray engine
def import_ray():
    """The ray module, or a HeadsplatError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise HeadsplatError(
            "--engine ray needs Ray: pip install 'headsplat[dist]' (or pip install 'ray>=2.9')"
        ) from err
    return ray


def _ray_slots(ray, threads: int, gpus_per_item: float) -> int:
    """How many items the cluster can run at once now (at least 1)."""
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) // threads
    if gpus_per_item:
        slots = min(slots, resources.get("GPU", 0) // gpus_per_item)
    return max(1, int(slots))


def _ray_item(runner: Callable, threads: int, item: BatchItem, *args, temp: str | None = None) -> ItemResult:
    """One item inside a Ray task: `runner` (run_item) with the task's thread budget and temporary folder."""
    _limit_threads(threads)
    with _temp_folder(temp):
        return runner(item, *args)


def run_ray(
    items: list[BatchItem],
    args: tuple,
    threads: int,
    on_result: Callable[[list[ItemResult]], None],
    address: str | None = None,
    num_cpus: int | None = None,
    gpus_per_item: float | None = None,
    item_timeout: float | None = None,
    runner: Callable = run_item,
) -> None:
    """Run every item as a Ray task (GPUs requested when the cluster has them); results go to `on_result`.

    `address` None starts a local Ray instance for this run (num_cpus of them); otherwise it connects
    to a running cluster ("auto" or "ray://host:10001"), whose nodes must see the same paths. `args`
    starts with the output folder; each task's temporary folder is made in out/.tmp (shared by the nodes).
    A cancelled task's temporary files are removed; on any exit the tasks still running are cancelled.
    """
    ray = import_ray()
    out = Path(args[0])
    started_here = not ray.is_initialized()
    if started_here:
        root = str(Path(__file__).resolve().parents[1])
        if address:
            kwargs: dict = {"address": address}  # an existing cluster keeps its own settings
        else:
            kwargs = {"num_cpus": num_cpus, "include_dashboard": False}
            # A local instance's workers import this checkout even when headsplat is not installed.
            kwargs["runtime_env"] = {
                "env_vars": {
                    "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
                }
            }
        ray.init(**kwargs)
    interrupted = True
    in_flight: dict = {}
    temps: dict = {}
    temp_root = _temp_root(out)
    try:
        device = args[1] if len(args) > 1 else "auto"
        if gpus_per_item is None:
            gpus_per_item = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 and device != "cpu" else 0.0
        task = ray.remote(_ray_item).options(num_cpus=threads, num_gpus=gpus_per_item, max_retries=0)
        scheduler = PortraitScheduler(items)
        started: dict = {}
        submitted: dict = {}
        cancelled: set = set()
        while scheduler:
            # With a timeout, only as many tasks as the cluster can run at once are in flight, so a
            # task's clock starts when it can start; without one, all are queued (autoscalers see demand).
            room = (
                math.inf if item_timeout is None else _ray_slots(ray, threads, gpus_per_item) - len(in_flight)
            )
            while room > 0 and (item := scheduler.take()) is not None:
                temp = Path(tempfile.mkdtemp(prefix="item-", dir=temp_root))
                ref = task.remote(runner, threads, item, *args, temp=str(temp))
                in_flight[ref], temps[ref] = item, temp
                started[ref], submitted[ref] = _now(), time.monotonic()
                room -= 1
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=None if item_timeout is None else 1.0)
            finished = []
            for ref in done:
                item = in_flight.pop(ref)
                seconds = round(time.monotonic() - submitted[ref], 3)
                try:
                    result = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    result = _failed(item, started[ref], _timeout_message(item_timeout), seconds)
                except ray.exceptions.RayError as err:  # the task's worker died, or the node went away
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    result = _failed(
                        item, started[ref], f"the Ray task failed: {type(err).__name__}: {first}", seconds
                    )
                if result.status != "ok":
                    remove_leftovers(out, [item])  # a cancelled or dead task leaves its temporary files
                _remove_tree(temps.pop(ref))
                scheduler.finished(item)
                finished.append(result)
            if finished:
                on_result(finished)
            if item_timeout is not None:
                for ref in in_flight:
                    if ref not in cancelled and time.monotonic() - submitted[ref] > item_timeout:
                        ray.cancel(ref, force=True)  # its result arrives as TaskCancelledError above
                        cancelled.add(ref)
        interrupted = False
    finally:
        with _signals_deferred(raise_after=not interrupted):
            if in_flight:  # interrupted: stop the tasks still running, then remove what they left
                for ref in in_flight:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                with contextlib.suppress(Exception):
                    ray.wait(list(in_flight), num_returns=len(in_flight), timeout=10)
                remove_leftovers(out, in_flight.values())
            _remove_tree(temp_root)
            if started_here:
                ray.shutdown()


# ------------------------------------------------------------------------------------------------
# The batch
@dataclass
class BatchConfig:
    """Everything `run_batch` needs; the CLI fills it in."""

    manifest: str
    """The manifest (.jsonl or .csv)."""
    output_dir: str = "out"
    """Folder the outputs and results.jsonl go into (made if missing)."""
    engine: str = "local"
    """local (worker processes on this machine) or ray."""
    workers: int | None = None
    """Local worker processes (None: one per core, as many as memory holds); with ray and no address,
    the CPUs of the local Ray instance."""
    threads: int | None = None
    """CPU threads per item (None: cores / workers, at least 1)."""
    device: str = "auto"
    """auto, cpu or cuda: where each item renders."""
    cache_dir: str | None = None
    """Where built avatars are kept (default: out/.cache, shared by all workers)."""
    redo: bool = False
    """Render every item again, even those an earlier run finished."""
    ray_address: str | None = None
    """Ray cluster to use ("auto", "ray://host:10001"); None starts a local one."""
    gpus_per_item: float | None = None
    """GPUs each Ray task asks for (None: 1 when the cluster has GPUs and device is not cpu, else 0)."""
    item_timeout: float | None = None
    """Seconds one item may take before it is stopped and marked failed (None: no limit). Locally the clock
    starts when a worker begins the item, after its start-up (importing torch and the pipeline); on Ray when the task is handed to the cluster (a fresh Ray worker's
    start-up counts), and only as many tasks as the cluster has room for are handed out at a time."""
    seed: int | None = None
    """Seed of the items that set none of their own (None: each pipeline's default)."""
    progress: bool = True
    """Show a progress bar over the whole batch."""


@dataclass
class BatchSummary:
    """How a batch went."""

    results: list[ItemResult]
    """One row per item, in manifest order."""
    results_path: Path
    """Where results.jsonl was written."""
    seconds: float
    """Wall time of the whole run, seconds."""

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.status == "error"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def run_batch(cfg: BatchConfig) -> BatchSummary:
    """Render every item of the manifest (skipping those done before) and write out/results.jsonl."""
    from tqdm import tqdm

    start = time.perf_counter()
    if cfg.engine not in ENGINES:
        raise HeadsplatError(f"--engine must be one of {', '.join(ENGINES)}; got {cfg.engine!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise HeadsplatError(f"--device must be auto, cpu or cuda; got {cfg.device!r}")
    if cfg.workers is not None and cfg.workers < 1:
        raise HeadsplatError(f"--workers must be at least 1; got {cfg.workers}")
    if cfg.item_timeout is not None and not cfg.item_timeout > 0:
        raise HeadsplatError(f"--item-timeout must be a positive number of seconds; got {cfg.item_timeout}")
    if cfg.threads is not None and cfg.threads < 1:
        raise HeadsplatError(f"--threads must be at least 1; got {cfg.threads}")
    items = load_manifest(cfg.manifest)
    if cfg.seed is not None:
        apply_default_seed(items, cfg.seed)
    if cfg.engine == "ray":
        import_ray()  # fail before any work when Ray is missing
    out = Path(cfg.output_dir).resolve()
    if out.exists() and not out.is_dir():
        raise HeadsplatError(f"output folder is a file: {out}")
    out.mkdir(parents=True, exist_ok=True)
    cache = str(Path(cfg.cache_dir).resolve()) if cfg.cache_dir else str(out / CACHE_NAME)
    own_cache = None if cfg.cache_dir else Path(cache)
    _remove_stale(out, items, own_cache)  # what an earlier run that was killed outright left behind
    log = ResultsLog(out / RESULTS_NAME, items, {} if cfg.redo else ResultsLog.read(out / RESULTS_NAME))
    todo: list[BatchItem] = []
    for item in items:
        old = None if cfg.redo else log.done_before(item, out)
        if old is not None:
            log.rows[item.output] = dataclasses.replace(old, status="skipped", line=item.line)
        else:
            todo.append(item)
    todo = _preflight(todo, log, out)
    log.write()
    counts = log.counts()
    bar = tqdm(
        total=len(items), initial=counts["skipped"] + counts["error"], unit="item", desc="batch",
        disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip

    def report(results: Iterable[ItemResult]) -> None:
        for r in results:
            if r.status == "error":
                tqdm.write(f"failed: {r.output} (line {r.line}): {r.error}", file=sys.stderr)
        counts = log.counts()
        bar.set_postfix(ok=counts["ok"], failed=counts["error"], skipped=counts["skipped"], refresh=False)

    def on_result(results: list[ItemResult]) -> None:
        log.update(results)
        report(results)
        bar.update(len(results))

    report(log.rows.values())

    cpus = _cpu_count()
    workers = cfg.workers or default_workers()
    if cfg.engine == "ray":
        threads = cfg.threads or 1  # Ray packs one-CPU tasks onto every core of the cluster
    else:
        threads = cfg.threads or max(1, cpus // max(1, min(workers, len(todo) or 1)))
    args = (str(out), cfg.device, cache)
    try:
        if todo and cfg.engine == "local":
            gpus = _local_gpus(cfg.device)
            run_local(
                todo, args, workers, threads, on_result, gpus=gpus, runner=run_item, item_timeout=cfg.item_timeout,
                warm_up=import_pipeline,
            )  # fmt: skip
        elif todo:
            run_ray(
                todo,
                args,
                threads,
                on_result,
                cfg.ray_address,
                cfg.workers,
                cfg.gpus_per_item,
                cfg.item_timeout,
                runner=run_item,
            )
    finally:
        bar.close()
        if own_cache is not None:  # an avatar being saved when its item was stopped
            _remove_temp_files(own_cache / "avatars", Path(os.path.realpath(out)), _CACHE_ENTRY.fullmatch)
    return BatchSummary(list(log.rows.values()), log.path, time.perf_counter() - start)


def apply_default_seed(items: list[BatchItem], seed: int) -> None:
    """Give `seed` to the items that set none of their own (and whose pipeline has one)."""
    for item in items:
        known_options = option_types(item.pipeline)
        if known_options is not None and "seed" in known_options:
            item.options.setdefault("seed", int(seed))


def _remove_stale(out: Path, items: list[BatchItem], own_cache: Path | None) -> None:
    """Remove what a run that was killed outright (no clean-up) left in `out`: item temporary folders,
    hidden temporary files beside the items' outputs and results.jsonl, and half-saved avatars in the
    batch's own cache. Files of names no item writes are left alone."""
    _remove_tree(out / TMP_NAME)
    remove_leftovers(out, items, results=True)
    if own_cache is not None:
        _remove_temp_files(own_cache / "avatars", Path(os.path.realpath(out)), _CACHE_ENTRY.fullmatch)


def _preflight(items: list[BatchItem], log: ResultsLog, out: Path) -> list[BatchItem]:
    """Fail the items whose input files are missing, or whose output would leave `out` or overwrite one
    of their inputs, without starting a worker; returns the rest."""
    from pipelines.files import require_file

    runnable = []
    for item in items:
        try:
            for key, value in item.inputs.items():
                if key not in TEXT_INPUTS:
                    require_file(value, key)
            check_item_output(item, out)
        except HeadsplatError as err:
            now = _now()
            log.rows[item.output] = ItemResult(
                item.output, item.line, item.pipeline, status="error", seconds=0.0, started=now, finished=now,
                error=str(err), fingerprint=item.fingerprint,
            )  # fmt: skip
        else:
            runnable.append(item)
    return runnable


def _local_gpus(device: str) -> int:
    """CUDA GPUs local workers are spread over (0 renders on the CPU)."""
    if device == "cpu":
        return 0
    import torch

    count = torch.cuda.device_count()  # reads the driver; does not start CUDA in this process
    if device == "cuda" and count == 0:
        raise HeadsplatError("--device cuda was asked for but no CUDA GPU is available")
    return count


# ------------------------------------------------------------------------------------------------
# CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.batch",
        description="Render every item of a manifest (.jsonl or .csv) into a folder, on this machine or a Ray "
        "cluster; out/results.jsonl records each item. Run it again to finish what failed.",
        epilog='Manifest line: {"portrait": "a.jpg", "audio": "a.wav", "output": "a.mp4", "size": 256}. '
        "Exit code 0: all items ok; 1: some failed; 2: bad manifest or flags.",
    )
    parser.add_argument(
        "manifest", help="the manifest: .jsonl (one JSON object per line) or .csv (header row)"
    )
    parser.add_argument(
        "-o", "--output-dir", default="out", help="folder for outputs and results.jsonl (default: out)"
    )
    parser.add_argument("--engine", default="local", choices=ENGINES, help="where items run (default: local)")
    parser.add_argument(
        "--workers", type=int, help="local worker processes (default: one per core, as memory allows); "
        "with --engine ray and no --ray-address, the CPUs of the local Ray instance",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="CPU threads per item (default: cores / workers)")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where items render (default: auto)"
    )
    parser.add_argument("--cache-dir", help="where built avatars are cached (default: OUTPUT_DIR/.cache)")
    parser.add_argument(
        "--item-timeout", type=float, metavar="SECONDS",
        help="stop an item that runs longer and mark it failed; with Ray, a worker's start-up counts "
        "(default: no limit)",
    )  # fmt: skip
    parser.add_argument("--redo", action="store_true", help="render every item again, even finished ones")
    parser.add_argument(
        "--ray-address", help="Ray cluster address ('auto', 'ray://host:10001'; default: a local one)"
    )
    parser.add_argument(
        "--gpus-per-item", type=float, help="GPUs per Ray task (default: 1 when the cluster has GPUs, else 0)"
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the items that set none of their own (default: each pipeline's)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import run_cli

    args = build_parser().parse_args(argv)
    cfg = BatchConfig(
        manifest=args.manifest, output_dir=args.output_dir, engine=args.engine, workers=args.workers,
        threads=args.threads, device=args.device, cache_dir=args.cache_dir, redo=args.redo,
        ray_address=args.ray_address, gpus_per_item=args.gpus_per_item, item_timeout=args.item_timeout, seed=args.seed,
        progress=not args.quiet,
    )  # fmt: skip

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


if __name__ == "__main__":
    sys.exit(main())

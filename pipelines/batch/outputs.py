"""Where an item may write, and removing what a stopped item (or a killed run) left in the output folder.

An item writes only inside the output folder and never over one of its own inputs. Its writers make a
hidden temporary file beside each output and rename it when done (`pipelines.files.atomic_output`), and
Avatar3D makes its files in a hidden staging folder; a writer that is killed leaves those, which are
removed here by their names. Nothing
outside the output folder's real path is ever touched, whatever links it holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from models.errors import HeadsplatError
from pipelines.batch.manifest import PIPELINES, RESULTS_NAME, TEXT_INPUTS, TMP_NAME, BatchItem, written_files
from pipelines.cli import same_file

#: A temporary file beside an output: `.STEM.<8 random characters>.SUFFIX` (pipelines.files.atomic_output;
#: the older `.NAME.<8>.tmp` form is still recognised); the middle part is tempfile's random name.
_TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)")
#: Avatar3D's staging folder inside its output folder (its files move out of it when all are done).
_STAGING_NAME = re.compile(r"\.avatar3d-[a-z0-9_]{8}")
#: A built avatar in the batch's own cache (pipelines.talk names them by a 24-digit hash).
_CACHE_ENTRY = re.compile(r"[0-9a-f]{24}\.safetensors")


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def check_item_output(item: BatchItem, out: Path) -> None:
    """A HeadsplatError when the item would write outside `out` (through a link inside it) or over
    one of its own inputs; checked before anything is made for the item."""
    root = _real(out)
    entry = PIPELINES[item.pipeline]
    target = out / item.output
    for path in [target, *(out / f for f in written_files(item))]:
        real = _real(path)
        if real == root and path == target and entry.output_is_folder:
            continue  # a folder output "." is the output folder itself
        if real == root or not real.is_relative_to(root):
            raise HeadsplatError(
                f"output {item.output!r} leads outside the output folder (to {real}, through a link); "
                "remove the link or pick another name"
            )
    for name in written_files(item):
        for key, value in item.inputs.items():
            if key not in TEXT_INPUTS and same_file(out / name, value):
                raise HeadsplatError(
                    f"output {item.output!r} would overwrite its {key} input {value}; write it under another name"
                )


def _remove_temp_files(folder: Path, root: Path, wanted: Callable[[str], bool]) -> list[Path]:
    """Remove the hidden temporary files in `folder` whose finished name `wanted` accepts; returns them.

    Nothing is touched unless the folder really lies inside `root` (the output folder's real path):
    a link in the output folder never leads the clean-up elsewhere.
    """
    if not _real(folder).is_relative_to(root):
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
    root = _real(out)
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
        removed += _remove_staging(folder, root)
    return removed


def _remove_staging(folder: Path, root: Path) -> list[Path]:
    """Remove the Avatar3D staging folders a killed item left in `folder` (never outside `root`)."""
    if not _real(folder).is_relative_to(root):
        return []
    try:
        entries = [e for e in os.scandir(folder) if _STAGING_NAME.fullmatch(e.name)]
    except OSError:
        return []
    for entry in entries:
        remove_tree(Path(entry.path))
    return [Path(e.path) for e in entries]


def remove_cache_leftovers(cache: Path, out: Path) -> list[Path]:
    """Remove the half-saved avatars in the batch's own cache (`cache`, inside `out`): an avatar being
    saved when its item was stopped."""
    return _remove_temp_files(cache / "avatars", _real(out), _CACHE_ENTRY.fullmatch)


def remove_tree(path: Path) -> None:
    """Remove a folder and what is in it (a link is removed, not followed); missing is fine."""
    if path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def make_temp_root(out: Path) -> Path:
    """out/.tmp, the folder of the items' own temporary folders, made fresh (a link there is replaced)."""
    root = out / TMP_NAME
    if root.is_symlink():
        root.unlink()
    root.mkdir(exist_ok=True)
    return root


def remove_stale(out: Path, items: list[BatchItem], own_cache: Path | None) -> None:
    """Remove what a run that was killed outright (no clean-up) left in `out`: item temporary folders,
    hidden temporary files beside the items' outputs and results.jsonl, and half-saved avatars in the
    batch's own cache. Files of names no item writes are left alone."""
    remove_tree(out / TMP_NAME)
    remove_leftovers(out, items, results=True)
    if own_cache is not None:
        remove_cache_leftovers(own_cache, out)

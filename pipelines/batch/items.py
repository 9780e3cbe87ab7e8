"""Making one item, inside a local worker process or a Ray task: its config, its run, its process setup."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from models.errors import HeadsplatError
from pipelines.batch.manifest import PIPELINES, BatchItem, config_class, unavailable
from pipelines.batch.outputs import check_item_output
from pipelines.batch.results import ItemResult, utc_now


def item_config(item: BatchItem, out_dir: Path, device: str, cache_dir: str | None):
    """The pipeline config of one item, with inputs, output path, device and avatar cache filled in."""
    config = config_class(item.pipeline)
    if config is None:
        raise HeadsplatError(unavailable(item.pipeline))
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
    result.started, result.worker = utc_now(), f"{socket.gethostname()}:{os.getpid()}"
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
    result.finished = utc_now()
    return result


def import_pipeline(item: BatchItem) -> None:
    """Import the item's pipeline (torch, the models): a worker does this before the item's clock starts."""
    importlib.import_module(PIPELINES[item.pipeline].module)


def limit_threads(threads: int) -> None:
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


@contextlib.contextmanager
def temp_folder(folder: str | None) -> Iterator[None]:
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

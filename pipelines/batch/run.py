"""`run_batch`: a manifest → its outputs and out/results.jsonl, on the engine `BatchConfig` names."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import HeadsplatError
from pipelines.batch.items import import_pipeline, run_item
from pipelines.batch.local import cpu_count, default_workers, run_local
from pipelines.batch.manifest import (
    CACHE_NAME,
    RESULTS_NAME,
    TEXT_INPUTS,
    BatchItem,
    apply_default_seed,
    load_manifest,
)
from pipelines.batch.outputs import check_item_output, remove_cache_leftovers, remove_stale
from pipelines.batch.ray_engine import import_ray, run_ray
from pipelines.batch.results import ItemResult, ResultsLog, failed_result
from pipelines.config_cli import flag, no_flag
from pipelines.device import DEVICES, cuda_count, resolve_device

ENGINES = ("local", "ray")


@dataclass
class BatchConfig:
    """Everything `run_batch` needs; the CLI fills it in (one flag per field but the manifest)."""

    manifest: str = field(metadata=no_flag())  # the CLI's one positional argument
    """The manifest: .jsonl (one JSON object per line) or .csv (a header row of keys)."""
    output_dir: str = field(default="out", metadata=flag("-o", "--output-dir"))
    """Folder for the outputs and results.jsonl (made if missing)."""
    engine: str = field(default="local", metadata=flag(choices=ENGINES))
    """Where items run: local (worker processes on this machine) or ray (a Ray cluster)."""
    workers: int | None = field(default=None, metadata=flag(default_help="one per core, as memory allows"))
    """Local worker processes; with --engine ray and no --ray-address, the CPUs of the local Ray instance."""
    threads: int | None = field(default=None, metadata=flag(default_help="cores / workers; with ray, 1"))
    """CPU threads per item."""
    device: str = field(default="auto", metadata=flag(choices=DEVICES))
    """Where items render: auto, cpu or cuda."""
    cache_dir: str | None = field(default=None, metadata=flag(default_help="OUTPUT_DIR/.cache"))
    """Where built avatars are cached, shared by all workers."""
    redo: bool = False
    """Render every item again, even those an earlier run finished."""
    ray_address: str | None = field(default=None, metadata=flag(default_help="a local one"))
    """Ray cluster address ('auto', 'ray://host:10001')."""
    gpus_per_item: float | None = field(
        default=None,
        metadata=flag(default_help="1 when the cluster has GPUs and --device is not cpu, else 0"),
    )
    """GPUs each Ray task asks for."""
    item_timeout: float | None = field(
        default=None, metadata=flag(metavar="SECONDS", default_help="no limit")
    )
    """Seconds one item may take before it is stopped and marked failed. Locally the clock starts when a
    worker begins the item, after its start-up (importing torch and the pipeline); with Ray when the task is
    handed to the cluster (a fresh Ray worker's start-up counts), and only as many tasks as the cluster has
    room for are handed out at a time."""
    seed: int | None = field(default=None, metadata=flag(default_help="each pipeline's own"))
    """Seed of the items that set none of their own."""
    progress: bool = field(default=True, metadata=flag(inverse="--quiet", help="No progress bars."))
    """A progress bar over the whole batch on stderr; --quiet turns it off."""


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


def _check_settings(cfg: BatchConfig) -> None:
    """A HeadsplatError for settings no run can use (before the manifest is read)."""
    if cfg.engine not in ENGINES:
        raise HeadsplatError(f"--engine must be one of {', '.join(ENGINES)}; got {cfg.engine!r}")
    if cfg.device not in DEVICES:
        raise HeadsplatError(f"--device must be auto, cpu or cuda; got {cfg.device!r}")
    if cfg.workers is not None and cfg.workers < 1:
        raise HeadsplatError(f"--workers must be at least 1; got {cfg.workers}")
    if cfg.item_timeout is not None and not cfg.item_timeout > 0:
        raise HeadsplatError(f"--item-timeout must be a positive number of seconds; got {cfg.item_timeout}")
    if cfg.threads is not None and cfg.threads < 1:
        raise HeadsplatError(f"--threads must be at least 1; got {cfg.threads}")


def run_batch(cfg: BatchConfig) -> BatchSummary:
    """Render every item of the manifest (skipping those done before) and write out/results.jsonl."""
    from tqdm import tqdm

    start = time.perf_counter()
    _check_settings(cfg)
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
    remove_stale(out, items, own_cache)  # what an earlier run that was killed outright left behind
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

    workers = cfg.workers or default_workers()
    if cfg.engine == "ray":
        threads = cfg.threads or 1  # Ray packs one-CPU tasks onto every core of the cluster
    else:
        threads = cfg.threads or max(1, cpu_count() // max(1, min(workers, len(todo) or 1)))
    args = (str(out), cfg.device, cache)
    try:
        if todo and cfg.engine == "local":
            # Workers are spread over the GPUs the device rule picks (none: they render on the CPU).
            gpus = 0 if resolve_device(cfg.device) == "cpu" else cuda_count()
            run_local(
                todo, args, workers, threads, on_result, gpus=gpus, runner=run_item, item_timeout=cfg.item_timeout,
                warm_up=import_pipeline,
            )  # fmt: skip
        elif todo:
            run_ray(
                todo, args, threads, on_result, cfg.ray_address, cfg.workers, cfg.gpus_per_item, cfg.item_timeout,
                runner=run_item,
            )  # fmt: skip
    finally:
        bar.close()
        if own_cache is not None:  # an avatar being saved when its item was stopped
            remove_cache_leftovers(own_cache, out)
    return BatchSummary(list(log.rows.values()), log.path, time.perf_counter() - start)


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
            log.rows[item.output] = failed_result(item, None, str(err))
        else:
            runnable.append(item)
    return runnable

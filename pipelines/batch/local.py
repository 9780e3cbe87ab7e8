"""The local engine: a pool of spawned worker processes on this machine, with per-item timeouts.

A worker leads its own process group, so stopping it (a timeout, Ctrl-C, SIGTERM) stops what it started
too (ffmpeg, espeak-ng). A worker that dies or hangs fails only its own item and is replaced.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipelines.batch.items import import_pipeline, limit_threads, run_item, temp_folder
from pipelines.batch.manifest import BatchItem
from pipelines.batch.outputs import make_temp_root, remove_leftovers, remove_tree
from pipelines.batch.results import ItemResult, failed_result, utc_now
from pipelines.batch.scheduling import PortraitScheduler, signals_deferred, timeout_message

#: Resident memory one worker needs at worst (512² talk: torch, the head model, an avatar, the encoder).
WORKER_MEMORY_BYTES = 2 << 30
#: What a local worker says when it begins an item.
STARTED = "started"
#: With --item-timeout, how long a local worker may take to begin an item it was handed (its start-up:
#: importing torch and the pipeline, starting CUDA), which the item's own clock does not count.
WORKER_START_SECONDS = 300.0


def cpu_count() -> int:
    """The cores this process may use (containers, taskset), not the machine's."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _available_memory() -> int:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 0


def default_workers(cpus: int | None = None, memory_bytes: int | None = None) -> int:
    """Workers for this machine: one per core, as many as memory holds (WORKER_MEMORY_BYTES each)."""
    cpus = cpus or cpu_count()
    memory_bytes = memory_bytes if memory_bytes is not None else _available_memory()
    by_memory = max(1, memory_bytes // WORKER_MEMORY_BYTES) if memory_bytes else cpus
    return int(max(1, min(cpus, by_memory)))


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
    limit_threads(threads)
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
        with temp_folder(temp):
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
        self.item, self.started, self.handed, self.began = item, utc_now(), time.monotonic(), None
        self.temp = Path(tempfile.mkdtemp(prefix="item-", dir=temp_root))
        with contextlib.suppress(OSError):  # a worker dead by now is caught by the caller
            self.conn.send((item, args, str(self.temp)))

    def deadline(self, timeout: float | None) -> float:
        """When the item is stopped: `timeout` after the worker began it (a stuck start-up ends too)."""
        if timeout is None:
            return math.inf
        return self.handed + WORKER_START_SECONDS if self.began is None else self.began + timeout

    def stop_message(self, timeout: float) -> str:
        """Why the item was stopped at its deadline."""
        if self.began is None:
            return f"stopped: its worker had not begun it after {WORKER_START_SECONDS:g} s of start-up"
        return timeout_message(timeout)

    def elapsed(self) -> float:
        return 0.0 if self.began is None else round(time.monotonic() - self.began, 3)

    def receive(self) -> ItemResult | None:
        """The item's result if it has arrived (None otherwise); notes when the worker began the item."""
        with contextlib.suppress(EOFError, OSError):  # it died while sending: a crash, seen by the caller
            while self.conn.poll():
                message = self.conn.recv()
                if isinstance(message, str) and message == STARTED:
                    self.began, self.started = time.monotonic(), utc_now()
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
            remove_tree(self.temp)
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


def _crash_result(item: BatchItem, exitcode: int | None, started: str | None, seconds: float) -> ItemResult:
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-exitcode).name}"
    hint = "; it may have run out of memory (try fewer --workers)" if exitcode == -signal.SIGKILL else ""
    return failed_result(
        item, started, f"the worker process died while making this item ({how}){hint}", seconds
    )


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

    temp_root = make_temp_root(out)
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
                    result = failed_result(
                        item, worker.started, worker.stop_message(item_timeout), worker.elapsed()
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
        with signals_deferred(raise_after=not interrupted):
            for worker in pool + retired:
                if interrupted or worker.item is not None:
                    worker.kill()
                if worker.item is not None:  # stopped mid-item: remove what it left
                    worker.end_item(out, stopped=True)
                worker.close()
            remove_tree(temp_root)

"""The Ray engine: every item a Ray task, on a local Ray instance or a running cluster.

Every node needs headsplat installed (`pip install 'headsplat[dist]'`) and must see the manifest's inputs
and the output folder at the same paths (a shared filesystem): tasks read the inputs and write their
outputs themselves, as local workers do.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from models.errors import HeadsplatError
from pipelines.batch.items import limit_threads, run_item, temp_folder
from pipelines.batch.manifest import BatchItem
from pipelines.batch.outputs import make_temp_root, remove_leftovers, remove_tree
from pipelines.batch.results import ItemResult, failed_result, utc_now
from pipelines.batch.scheduling import PortraitScheduler, signals_deferred, timeout_message

#: The checkout's root: a local Ray instance's workers import headsplat from here.
_ROOT = Path(__file__).resolve().parents[2]


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
    limit_threads(threads)
    with temp_folder(temp):
        return runner(item, *args)


def _init_ray(ray, address: str | None, num_cpus: int | None) -> None:
    """Connect to the cluster at `address`, or start a local Ray instance of `num_cpus` CPUs."""
    if address:
        ray.init(address=address)  # an existing cluster keeps its own settings
        return
    # A local instance's workers import this checkout even when headsplat is not installed.
    path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})


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
        _init_ray(ray, address, num_cpus)
    interrupted = True
    in_flight: dict = {}
    temps: dict = {}
    temp_root = make_temp_root(out)
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
                started[ref], submitted[ref] = utc_now(), time.monotonic()
                room -= 1
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=None if item_timeout is None else 1.0)
            finished = []
            for ref in done:
                item = in_flight.pop(ref)
                seconds = round(time.monotonic() - submitted[ref], 3)
                try:
                    result = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    result = failed_result(item, started[ref], timeout_message(item_timeout), seconds)
                except ray.exceptions.RayError as err:  # the task's worker died, or the node went away
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    result = failed_result(
                        item, started[ref], f"the Ray task failed: {type(err).__name__}: {first}", seconds
                    )
                if result.status != "ok":
                    remove_leftovers(out, [item])  # a cancelled or dead task leaves its temporary files
                remove_tree(temps.pop(ref))
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
        with signals_deferred(raise_after=not interrupted):
            if in_flight:  # interrupted: stop the tasks still running, then remove what they left
                for ref in in_flight:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                with contextlib.suppress(Exception):
                    ray.wait(list(in_flight), num_returns=len(in_flight), timeout=10)
                remove_leftovers(out, in_flight.values())
            remove_tree(temp_root)
            if started_here:
                ray.shutdown()

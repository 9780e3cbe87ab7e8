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

The package, one job a file:

    manifest.py     the pipelines an item can run; rows → checked BatchItems (types, names, clashes)
    results.py      ItemResult, a row of results.jsonl, and ResultsLog, the file
    outputs.py      where an item may write; removing what a stopped item or a killed run left
    items.py        making one item (run_item), inside a worker process or a Ray task
    scheduling.py   what both engines share: item order (one avatar build per portrait), stopping safely
    local.py        the local engine: a pool of worker processes, crashes and timeouts
    ray_engine.py   the Ray engine
    run.py          BatchConfig and run_batch: a manifest → out/ on either engine
    cli.py          the command line (BatchConfig's fields are its flags)
"""

from pipelines.batch.cli import build_parser, main
from pipelines.batch.items import import_pipeline, item_config, run_item
from pipelines.batch.local import (
    STARTED,
    WORKER_MEMORY_BYTES,
    WORKER_START_SECONDS,
    cpu_count,
    default_workers,
    run_local,
)
from pipelines.batch.manifest import (
    CACHE_NAME,
    PIPELINES,
    RESERVED_FIELDS,
    RESULTS_NAME,
    TEXT_INPUTS,
    TMP_NAME,
    BatchItem,
    ManifestError,
    PipelineEntry,
    apply_default_seed,
    load_manifest,
    option_types,
    parse_item,
    written_files,
)
from pipelines.batch.outputs import check_item_output, remove_leftovers
from pipelines.batch.ray_engine import import_ray, run_ray
from pipelines.batch.results import STATUSES, ItemResult, ResultsLog
from pipelines.batch.run import ENGINES, BatchConfig, BatchSummary, run_batch
from pipelines.batch.scheduling import PortraitScheduler

__all__ = [
    "CACHE_NAME",
    "ENGINES",
    "PIPELINES",
    "RESERVED_FIELDS",
    "RESULTS_NAME",
    "STARTED",
    "STATUSES",
    "TEXT_INPUTS",
    "TMP_NAME",
    "WORKER_MEMORY_BYTES",
    "WORKER_START_SECONDS",
    "BatchConfig",
    "BatchItem",
    "BatchSummary",
    "ItemResult",
    "ManifestError",
    "PipelineEntry",
    "PortraitScheduler",
    "ResultsLog",
    "apply_default_seed",
    "build_parser",
    "check_item_output",
    "cpu_count",
    "default_workers",
    "import_pipeline",
    "import_ray",
    "item_config",
    "load_manifest",
    "main",
    "option_types",
    "parse_item",
    "remove_leftovers",
    "run_batch",
    "run_item",
    "run_local",
    "run_ray",
    "written_files",
]

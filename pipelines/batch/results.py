"""out/results.jsonl: what happened to each item (`ItemResult`), kept by `ResultsLog` in manifest order."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipelines.batch.manifest import BatchItem

STATUSES = ("pending", "ok", "error", "skipped")


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the millisecond: the results' `started` and `finished`."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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


def failed_result(item: BatchItem, started: str | None, error: str, seconds: float = 0.0) -> ItemResult:
    """The `error` row of an item that failed outside its pipeline (a missing input, a dead worker, a timeout)."""
    return ItemResult(
        item.output, item.line, item.pipeline, status="error", seconds=seconds, started=started or utc_now(),
        finished=utc_now(), error=error, fingerprint=item.fingerprint,
    )  # fmt: skip


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

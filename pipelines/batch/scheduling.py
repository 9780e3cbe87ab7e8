"""What both engines share: the order items go out in, and stopping them without being cut short."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections import deque
from collections.abc import Iterator

from pipelines.batch.manifest import BatchItem


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


def timeout_message(seconds: float) -> str:
    """The error of an item stopped by --item-timeout after `seconds`."""
    return f"stopped after {seconds:g} s (--item-timeout); give it more time or a shorter driver"


@contextlib.contextmanager
def signals_deferred(raise_after: bool = True) -> Iterator[None]:
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

"""The one lifecycle of Tamiyo's background threads.

The step path never does slow work itself: it hands it to a daemon thread and returns.
Every such thread lives the same way: built idle, ``start()`` once (never in a
constructor, so building a part has no side effects), woken when there is work,
``close()`` to stop it. ``QueueWorker`` adds the common case: a bounded queue whose
items a handler takes in batches, a stated drop rule for when it is full, counters, and
``wait_idle`` for shutdown, tests and benchmarks, and an optional linger: waking a
thread from the step path costs the trainer more than the hand-off itself on a busy
machine (the woken thread can take the trainer's core and the interpreter lock), so
records that can wait a little are picked up by the thread on its own period instead.

Threads are daemons and ``close`` joins them only for a bounded time: a handler stuck in
a library call can neither stall the trainer nor keep the process from exiting.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_TIMEOUT_S = 2.0


class Worker:
    """One daemon thread that runs ``work()`` each time it is woken, until closed.

    ``work`` must catch its own errors: one that escapes is logged and the thread goes
    on waiting for the next wake. With ``period_s``, the thread also runs ``work`` each
    time that long passes without a wake.
    """

    def __init__(
        self, name: str, work: Callable[[], None], *, period_s: float | None = None
    ) -> None:
        self.name = name
        self._work = work
        self._period_s = period_s
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._start_lock:
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Stop after the work in progress; True when the thread ended within ``timeout_s``."""
        self._closing.set()
        self._wake.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._period_s)
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                self._work()
            except Exception:
                log.exception("background worker %s failed", self.name)


class DropRule(StrEnum):
    """What ``submit`` does when the queue is full."""

    DROP_NEWEST = "drop_newest"  # refuse the new item: what is queued keeps its order
    DROP_OLDEST = "drop_oldest"  # evict the oldest item: the freshest are the ones kept


@dataclass(slots=True)
class WorkerCounters:
    submitted: int = 0
    dropped: int = 0  # refused or evicted by the drop rule
    handled: int = 0  # items the handler took, failed or not
    failed: int = 0  # items whose handling raised (they are not retried)


class QueueWorker(Generic[T]):
    """A bounded queue drained by one background thread.

    ``submit`` never blocks: past ``capacity`` queued items the drop rule applies and
    the drop is counted. Give either ``handle_item`` (each item on its own: one that
    raises is counted and the rest go on) or ``handle_batch`` (every item queued at the
    time, oldest first: a burst costs one call; if it raises, the batch counts as failed).

    ``linger_ms`` > 0: ``submit`` does not wake the thread (unless the queue is half
    full); the thread takes what is queued every ``linger_ms``. For records nobody
    waits for within that time (telemetry, statistics, experience).
    """

    def __init__(
        self,
        name: str,
        *,
        capacity: int,
        drop: DropRule,
        handle_item: Callable[[T], None] | None = None,
        handle_batch: Callable[[Sequence[T]], None] | None = None,
        linger_ms: float = 0.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms}")
        if (handle_item is None) == (handle_batch is None):
            raise ValueError("give exactly one of handle_item and handle_batch")
        self.capacity = capacity
        self.drop = drop
        self.counters = WorkerCounters()
        self._handle_item = handle_item
        self._handle_batch = handle_batch
        self._items: deque[T] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake_at_items = max(capacity // 2, 1) if linger_ms > 0 else 1
        self._worker = Worker(name, self._drain, period_s=linger_ms / 1000.0 or None)

    def start(self) -> None:
        self._worker.start()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Stop the thread; what is still queued is not handled."""
        return self._worker.close(timeout_s)

    def submit(self, item: T) -> bool:
        """Queue ``item`` without blocking; False when the drop rule refused it."""
        with self._lock:
            self.counters.submitted += 1
            if len(self._items) >= self.capacity:
                self.counters.dropped += 1
                if self.drop is DropRule.DROP_NEWEST:
                    return False
                self._items.popleft()
            self._items.append(item)
            wake = len(self._items) >= self._wake_at_items
        if wake:
            self._worker.wake()
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or being handled; False on timeout."""
        self._worker.wake()
        with self._idle:
            return self._idle.wait_for(lambda: not self._items and not self._in_flight, timeout_s)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    return
                batch = list(self._items)
                self._items.clear()
                self._in_flight = len(batch)
            failed = self._handle(batch)
            with self._idle:
                self.counters.handled += len(batch)
                self.counters.failed += failed
                self._in_flight = 0
                self._idle.notify_all()

    def _handle(self, batch: list[T]) -> int:
        """Hand ``batch`` over; the number of items whose handling raised."""
        if self._handle_batch is not None:
            try:
                self._handle_batch(batch)
            except Exception:
                log.exception("%s: handler failed on %d items", self._worker.name, len(batch))
                return len(batch)
            return 0
        assert self._handle_item is not None
        failed = 0
        for item in batch:
            try:
                self._handle_item(item)
            except Exception:
                if not failed:  # one log line per batch: a failing sink fails every item
                    log.exception("%s: handler failed", self._worker.name)
                failed += 1
        return failed

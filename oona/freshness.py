"""Freshness windows and the in-process replay cache.

A signature proves who made a message, not that it is new: a captured message verifies
forever. Two checks close that gap. The freshness window bounds how old (or how far
in the future) a message may be; the replay cache remembers every id accepted inside
the window, so the same message cannot be applied twice while it is still fresh. The
cache keeps each id at least as long as its message stays fresh, so a replay is
always caught by one check or the other.

Consumers across processes use the Redis ledger (oona.dedup); the step path, which
must not make a network round trip, uses `ReplayCache` here.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from oona.errors import RejectedMessage

Clock = Callable[[], int]
"""Wall-clock time in nanoseconds since the epoch (time.time_ns by default)."""


@dataclass(frozen=True)
class FreshnessWindow:
    """How old, and how far ahead of the verifier's clock, a message may be.

    The future bound is small: it only absorbs clock skew between hosts.
    """

    max_age_ms: float = 60_000.0
    max_future_ms: float = 5_000.0

    def __post_init__(self) -> None:
        if self.max_age_ms <= 0 or self.max_future_ms < 0:
            raise ValueError("max_age_ms must be positive and max_future_ms not negative")

    def check(self, issued_at_ns: int, reference_ns: int) -> None:
        """Raise RejectedMessage('stale' or 'future') unless `issued_at_ns` is within
        the window around `reference_ns`."""
        skew_ms = (reference_ns - issued_at_ns) / 1e6
        if skew_ms > self.max_age_ms:
            raise RejectedMessage("stale", f"issued {skew_ms:.0f} ms before it was checked")
        if -skew_ms > self.max_future_ms:
            raise RejectedMessage("future", f"issued {-skew_ms:.0f} ms after it was checked")


class ReplayCache:
    """Bounded set of recently accepted ids, each kept until its message is stale.

    `check_and_add` is one atomic step (under a lock), so two threads presenting the
    same id cannot both be accepted. When the cache is full of ids that are still
    fresh it must forget one, which would let that message be replayed; instead it
    forgets the id issued earliest and from then on refuses every message issued no
    later than it (reason ``replay_horizon``). Sized for the traffic (`max_entries`
    above the messages accepted per freshness window) this never happens; if it
    does, it fails closed and is counted.
    """

    def __init__(
        self,
        window: FreshnessWindow | None = None,
        *,
        max_entries: int = 200_000,
        clock_ns: Clock = time.time_ns,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.window = window or FreshnessWindow()
        self.max_entries = max_entries
        self._clock_ns = clock_ns
        self._max_age_ns = int(self.window.max_age_ms * 1e6)
        self._lock = threading.Lock()
        self._issued: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._horizon_ns: int | None = None
        self.forced_evictions = 0

    def __len__(self) -> int:
        """How many ids are remembered now (expired ones are dropped first)."""
        with self._lock:
            self._expire(self._clock_ns())
            return len(self._issued)

    def check_and_add(self, message_id: str, issued_at_ns: int) -> None:
        """Record `message_id` as accepted; raise RejectedMessage('replay') if it was
        accepted before and is still remembered.

        The caller checks freshness first: an id older than the window is no longer
        remembered and is caught by that check instead.
        """
        now_ns = self._clock_ns()
        # Fresh until max_age past the later of issue and arrival: a message from up to
        # max_future ahead stays fresh longer than one issued now.
        reference_ns = max(issued_at_ns, now_ns)
        with self._lock:
            self._expire(now_ns)
            if message_id in self._issued:
                raise RejectedMessage("replay", f"id {message_id} was accepted before")
            # By issue time, not arrival: a forgotten id comes back with its own issue
            # time, however much later it is replayed.
            if self._horizon_ns is not None and issued_at_ns <= self._horizon_ns:
                raise RejectedMessage(
                    "replay_horizon", "issued before the oldest id the full cache still holds"
                )
            if len(self._issued) >= self.max_entries:
                self._evict_earliest()
            self._issued[message_id] = reference_ns
            heapq.heappush(self._heap, (reference_ns, message_id))

    def _expire(self, now_ns: int) -> None:
        heap = self._heap
        while heap and heap[0][0] + self._max_age_ns < now_ns:
            reference_ns, message_id = heapq.heappop(heap)
            if self._issued.get(message_id) == reference_ns:
                del self._issued[message_id]

    def _evict_earliest(self) -> None:
        reference_ns, message_id = heapq.heappop(self._heap)
        del self._issued[message_id]
        self._horizon_ns = max(self._horizon_ns or reference_ns, reference_ns)
        self.forced_evictions += 1

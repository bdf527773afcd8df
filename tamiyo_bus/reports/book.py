"""Where every report in the log stands: pending, parked or acknowledged, and when it
is next due to be published.

The book is rebuilt from the log on start and then kept in step with it: every change
here follows a record appended to the log (REPORT, ACK, PARK, UNPARK), except the
retry schedule, which lives in memory only (after a restart every pending report is
published again in log order, and its attempt count starts again).
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from leyline_pb import leyline_pb2 as pb
from oona.backoff import backoff_s
from tamiyo_bus.reports.records import Ack, Park, Unpark


class ReportState(StrEnum):
    PENDING = "pending"
    PARKED = "parked"
    ACKED = "acked"


@dataclass(frozen=True)
class RetryPolicy:
    """When an unacknowledged report is published again, and when it is parked.

    After the n-th publish Tamiyo waits `ack_timeout_ms * 2^(n-1)` (capped at
    `retry_backoff_max_ms`, jittered to 50-100 %) for the ack; after `max_attempts`
    publishes without one the report is parked: with the defaults, after about ten
    minutes without an ack. At most `max_in_flight_reports` reports await an ack at
    once (see ReportBook).
    """

    ack_timeout_ms: float = 5_000.0
    retry_backoff_max_ms: float = 300_000.0
    max_attempts: int = 8
    max_in_flight_reports: int = 256

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.ack_timeout_ms <= 0 or self.max_in_flight_reports < 1:
            raise ValueError(
                "max_attempts and max_in_flight_reports must be >= 1, ack_timeout_ms > 0"
            )

    def delay_s(self, attempts: int, jitter: float) -> float:
        """Wait after the `attempts`-th publish; `jitter` in [0, 1)."""
        return backoff_s(
            attempts,
            base_s=self.ack_timeout_ms / 1000.0,
            max_s=self.retry_backoff_max_ms / 1000.0,
            jitter=jitter,
        )


@dataclass
class ReportEntry:
    """One report and its delivery state (`seq`: its REPORT record)."""

    report: pb.FieldReport
    payload: bytes
    priority: int
    seq: int
    state: ReportState = ReportState.PENDING
    attempts: int = 0
    next_due: float = 0.0
    published: int = 0
    acked_at_ns: int = 0
    acked_by: str = ""
    ack_seq: int | None = None
    park_seq: int | None = None

    @property
    def report_id(self) -> str:
        return self.report.report_id


class ReportBook:
    """Thread-safe: the writer thread adds reports, the delivery side moves them.

    Flow control: at most `max_in_flight_reports` reports are published and awaiting
    their ack at any time; the others wait in log order. A slow or absent Simic then
    holds a bounded number of reports (and their retried copies) in the stream, while
    the rest accumulate in the log, where they are safe, and flow as acks come back.
    """

    def __init__(
        self,
        retry: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.retry = retry
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self._entries: dict[str, ReportEntry] = {}
        self._fresh: deque[str] = deque()  # pending, not yet taken: waiting for a slot
        self._in_flight: set[str] = set()  # pending, taken: holding a slot
        self._due: list[tuple[float, int, str]] = []  # retry times of in-flight reports
        self.on_change: Callable[[], None] = lambda: None

    def _schedule(self, entry: ReportEntry, due: float) -> None:
        entry.next_due = due
        heapq.heappush(self._due, (due, entry.seq, entry.report_id))

    def _valid_due(self, due: float, report_id: str) -> ReportEntry | None:
        entry = self._entries.get(report_id)
        if entry is None or report_id not in self._in_flight or entry.next_due != due:
            return None  # acked, parked or rescheduled since: a stale heap item
        return entry

    # ---------------------------------------------------- following the log

    def add(self, report: pb.FieldReport, payload: bytes, priority: int, seq: int) -> bool:
        """A REPORT record; False when the report is already known."""
        with self._lock:
            if report.report_id in self._entries:
                return False
            self._entries[report.report_id] = ReportEntry(report, payload, priority, seq)
            self._fresh.append(report.report_id)
        self.on_change()
        return True

    def apply_ack(self, ack: Ack, seq: int) -> bool:
        """An ACK record; False when the report is unknown or was already acked."""
        with self._lock:
            entry = self._entries.get(ack.report_id)
            if entry is None or entry.state is ReportState.ACKED:
                return False
            entry.state = ReportState.ACKED
            entry.acked_at_ns = ack.acked_at_ns
            entry.acked_by = ack.consumer
            entry.ack_seq = seq
            self._in_flight.discard(ack.report_id)
        self.on_change()
        return True

    def apply_park(self, park: Park, seq: int) -> bool:
        with self._lock:
            entry = self._entries.get(park.report_id)
            if entry is None or entry.state is not ReportState.PENDING:
                return False
            entry.state = ReportState.PARKED
            entry.attempts = park.attempts
            entry.park_seq = seq
            self._in_flight.discard(park.report_id)
        self.on_change()
        return True

    def apply_unpark(self, unpark: Unpark, seq: int) -> bool:
        with self._lock:
            entry = self._entries.get(unpark.report_id)
            if entry is None or entry.state is not ReportState.PARKED:
                return False
            entry.state = ReportState.PENDING
            entry.attempts = 0
            entry.park_seq = seq
            self._fresh.append(unpark.report_id)
        self.on_change()
        return True

    def forget(self, report_id: str, seq: int) -> None:
        """The report's REPORT record `seq` left the log (acked, retained, compacted)."""
        with self._lock:
            entry = self._entries.get(report_id)
            if entry is not None and entry.seq == seq:
                del self._entries[report_id]
                self._in_flight.discard(report_id)

    def expedite(self, report_id: str) -> bool:
        """Make a pending report due now (an operator's retry of a report not parked;
        one still waiting for a slot keeps its place)."""
        with self._lock:
            entry = self._entries.get(report_id)
            if entry is None or entry.state is not ReportState.PENDING:
                return False
            if report_id in self._in_flight and entry.next_due != float("inf"):
                self._schedule(entry, self._clock())
        self.on_change()
        return True

    # ------------------------------------------------------------ delivery

    def take_due(self, limit: int) -> tuple[list[ReportEntry], list[ReportEntry]]:
        """Up to `limit` reports to publish now (retries first, then waiting reports
        while slots are free), and the reports out of attempts (to park).

        Taken reports leave the schedule until `published` or `requeue` puts them back,
        so a report is never in flight twice from one process.
        """
        publish: list[ReportEntry] = []
        park: list[ReportEntry] = []
        now = self._clock()
        with self._lock:
            while self._due and self._due[0][0] <= now and len(publish) < limit:
                due, _, report_id = heapq.heappop(self._due)
                entry = self._valid_due(due, report_id)
                if entry is None:
                    continue
                entry.next_due = float("inf")
                if entry.attempts >= self.retry.max_attempts:
                    park.append(replace(entry))
                else:
                    publish.append(replace(entry))
            while (
                self._fresh
                and len(publish) < limit
                and len(self._in_flight) < self.retry.max_in_flight_reports
            ):
                report_id = self._fresh.popleft()
                entry = self._entries.get(report_id)
                if entry is None or entry.state is not ReportState.PENDING:
                    continue
                if report_id in self._in_flight:
                    continue
                self._in_flight.add(report_id)
                entry.next_due = float("inf")
                publish.append(replace(entry))
        return publish, park

    def published(self, report_ids: list[str]) -> None:
        """The bus accepted these reports: one more attempt each; wait for the ack."""
        now = self._clock()
        with self._lock:
            for report_id in report_ids:
                entry = self._entries.get(report_id)
                if entry is None or report_id not in self._in_flight:
                    continue
                entry.attempts += 1
                entry.published += 1
                self._schedule(entry, now + self.retry.delay_s(entry.attempts, self._jitter()))

    def requeue(self, report_ids: list[str], delay_s: float) -> None:
        """Publishing failed: the reports are due again after `delay_s`, no attempt
        counted (a report that never reached the bus was not delivered)."""
        now = self._clock()
        with self._lock:
            for report_id in report_ids:
                entry = self._entries.get(report_id)
                if entry is not None and report_id in self._in_flight:
                    self._schedule(entry, now + delay_s)

    def seconds_until_due(self) -> float | None:
        """When `take_due` will next have work: 0 when a waiting report has a free
        slot, else the next retry time; None when nothing is scheduled."""
        with self._lock:
            if self._fresh and len(self._in_flight) < self.retry.max_in_flight_reports:
                return 0.0
            while self._due:
                due, _, report_id = self._due[0]
                if self._valid_due(due, report_id) is None:
                    heapq.heappop(self._due)
                    continue
                return max(due - self._clock(), 0.0)
            return None

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    # ------------------------------------------------------------- queries

    def get(self, report_id: str) -> ReportEntry | None:
        with self._lock:
            entry = self._entries.get(report_id)
            return None if entry is None else replace(entry)

    def has(self, report_id: str) -> bool:
        with self._lock:
            return report_id in self._entries

    def state_of(self, report_id: str) -> ReportState | None:
        with self._lock:
            entry = self._entries.get(report_id)
            return None if entry is None else entry.state

    def entries(self, state: ReportState | None = None) -> list[ReportEntry]:
        """Snapshots in log order, optionally of one state."""
        with self._lock:
            chosen = [
                replace(e) for e in self._entries.values() if state is None or e.state is state
            ]
        return sorted(chosen, key=lambda e: e.seq)

    def counts(self) -> dict[ReportState, int]:
        with self._lock:
            counts = dict.fromkeys(ReportState, 0)
            for entry in self._entries.values():
                counts[entry.state] += 1
            return counts

    # ------------------------------------------------------------ liveness

    def report_live(self, report_id: str, seq: int, now_ns: int, retention_s: float) -> bool:
        """A REPORT record is needed until its ack is older than the retention."""
        with self._lock:
            entry = self._entries.get(report_id)
            if entry is None or entry.seq != seq:
                return False
            if entry.state is not ReportState.ACKED:
                return True
            return now_ns - entry.acked_at_ns < retention_s * 1e9

    def ack_of(self, report_id: str, ack_seq: int) -> int | None:
        """The REPORT record that ACK record `ack_seq` retired, if it is still known."""
        with self._lock:
            entry = self._entries.get(report_id)
            return entry.seq if entry is not None and entry.ack_seq == ack_seq else None

    def park_live(self, report_id: str, seq: int) -> bool:
        """The latest PARK/UNPARK of an unacknowledged report is needed."""
        with self._lock:
            entry = self._entries.get(report_id)
            return (
                entry is not None and entry.state is not ReportState.ACKED and entry.park_seq == seq
            )

"""FieldReporter: the step path's handle on field reports, and the writer thread
behind it.

The step path calls `on_command` (a decision acted), `on_epoch_end`, `on_event` and
`on_run_end`. Each copies the few values a window needs and offers them to a bounded
queue without waiting; nothing else happens on the caller's thread. When the queue is
full the call returns False at once, the item is not recorded, and
`reports_queue_full{kind}` counts it. What that costs: a dropped decision opens no
window; a dropped epoch end loses that epoch's metrics but not the count (windows
count epoch numbers, so the next epoch end catches up); a dropped event is not seen
by the windows it concerned.

One writer thread owns the windows and the log. It appends what it observes, closes
windows into reports (REPORT records; published only once written), follows operator
retry requests, and compacts the log. The delivery side appends ACK and PARK records
through `record_acks` and `park` from its own threads.

Start-up replays the log: open windows come back exactly as they were (they keep
counting epochs where they left off), windows closed by a crash before their report
was written are reported now, and every report not yet acknowledged is due again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from leyline_pb import leyline_pb2 as pb
from oona.backoff import Backoff
from oona.metrics import BusMetrics
from oona.settings import DEFAULT_DATA_DIR
from tamiyo_bus.reports import records
from tamiyo_bus.reports.book import ReportEntry, ReportState, RetryPolicy
from tamiyo_bus.reports.records import Ack, Kind, Park, RunEnd, Unpark
from tamiyo_bus.reports.requests import ALL, pending_requests
from tamiyo_bus.reports.state import LogState
from tamiyo_bus.reports.wal import Opener, WalSettings, WriteAheadLog
from tamiyo_bus.reports.windows import (
    Decision,
    EpochEnd,
    ObservedEvent,
    Window,
    WindowSettings,
    build_report,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNASSIGNED = 2**63
_NORMAL = pb.MESSAGE_PRIORITY_NORMAL
_FULL_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class ReportSettings:
    """The Tamiyo side of field reports; units in the names."""

    wal_dir: Path = DEFAULT_DATA_DIR / "reports"
    windows: WindowSettings = field(default_factory=WindowSettings)
    wal: WalSettings = field(default_factory=WalSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue_max_items: int = 10_000
    writer_batch_max_items: int = 512
    retention_s: float = 3_600.0
    compaction_interval_s: float = 60.0
    compaction_rewrite_ratio: float = 0.25
    control_poll_interval_ms: float = 500.0
    write_retry_backoff_max_ms: float = 5_000.0

    def __post_init__(self) -> None:
        if self.queue_max_items < 1 or self.writer_batch_max_items < 1:
            raise ValueError("queue_max_items and writer_batch_max_items must be >= 1")
        if self.retention_s < 0 or not 0 <= self.compaction_rewrite_ratio < 1:
            raise ValueError("retention_s >= 0 and 0 <= compaction_rewrite_ratio < 1")


@dataclass
class _Pending:
    """A record to append and what to do once it has its sequence number."""

    kind: Kind
    body: bytes
    priority: int
    key: str
    then: Callable[[int], None] | None = None


_STOP = object()
WRITE_RETRY_BASE_S = 0.01


class FieldReporter:
    """Opening it recovers the log (blocking: do it at start-up); `start` runs the
    writer thread; `close` drains the queue, fsyncs and releases the log."""

    def __init__(
        self,
        settings: ReportSettings,
        *,
        metrics: BusMetrics | None = None,
        fsync: Callable[[int], None] | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        opener: Opener = os.open,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or BusMetrics()
        self._wall_ns = wall_ns
        self.state = LogState(settings.retry, settings.retention_s)
        self.book = self.state.book
        self.tracker = self.state.tracker
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_max_items)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._last_full_log = 0.0
        self.wal = WriteAheadLog(
            settings.wal_dir, settings.wal, self.metrics, fsync=fsync or os.fsync, opener=opener
        )
        self._next_compaction = time.monotonic() + settings.compaction_interval_s
        self._next_control = 0.0
        self._recover()

    # ------------------------------------------------------------ step path

    def on_command(self, command: pb.AdaptationCommand, state: pb.SystemStatePacket) -> bool:
        """A decision acted: open its window. Never blocks; False if not recorded
        (a NO_OP, or the queue was full)."""
        decision = Decision.from_command(command, state, self.settings.windows.window_epochs)
        if decision is None:
            return False
        return self._offer("command", decision)

    def on_epoch_end(self, state: pb.SystemStatePacket) -> bool:
        """`state.current_epoch` just ended. Never blocks; False if not recorded."""
        return self._offer("epoch", EpochEnd.from_state(state))

    def on_event(self, event: ObservedEvent) -> bool:
        """A breaker or risk event. Never blocks; False if not recorded."""
        return self._offer("event", event)

    def on_run_end(self, training_run_id: str) -> bool:
        """The run ended: its open windows close early (see `synthesise_outcome`).
        Never blocks."""
        return self._offer("run_end", RunEnd(training_run_id))

    def _offer(self, kind: str, item: object) -> bool:
        if self._closed.is_set():
            self.metrics.inc("reports_offer_closed", kind=kind)
            return False
        try:
            self._queue.put_nowait((kind, item))
        except queue.Full:
            self.metrics.inc("reports_queue_full", kind=kind)
            now = time.monotonic()
            if now - self._last_full_log >= _FULL_LOG_INTERVAL_S:
                self._last_full_log = now
                log.warning(
                    "field-report queue full (%d items): %s not recorded (%d dropped so far)",
                    self.settings.queue_max_items, kind,
                    int(self.metrics.count("reports_queue_full")),
                )  # fmt: skip
            return False
        return True

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FieldReporter:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="field-report-writer", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking observations, write what is queued, fsync, release the log."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("field-report writer did not stop within %.1fs", timeout_s)
                return
        self.wal.close()

    def __enter__(self) -> FieldReporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_writer(self, fn: Callable[[], T], timeout_s: float = 30.0) -> T:
        """Run `fn` on the writer thread after everything queued before it (blocking:
        not for the step path). Used to flush, compact or inspect windows safely."""
        done = threading.Event()
        box: list[Any] = []

        def call() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            finally:
                done.set()

        self._queue.put(("call", call), timeout=timeout_s)
        if not done.wait(timeout_s):
            raise TimeoutError("the field-report writer did not answer")
        ok, value = box[0]
        if not ok:
            raise value
        result: T = value
        return result

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything offered so far is written (and synced)."""
        self.on_writer(self.wal.sync, timeout_s)

    def compact(self, timeout_s: float = 30.0) -> None:
        """Compact the log now, on the writer thread."""
        self.on_writer(self._compact, timeout_s)

    # --------------------------------------------------------- writer thread

    def _run(self) -> None:
        while True:
            batch: list[Any] = []
            try:
                batch.append(self._queue.get(timeout=self._idle_timeout()))
                while len(batch) < self.settings.writer_batch_max_items:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            stop = _STOP in batch
            try:
                self._process([item for item in batch if item is not _STOP])
                self.wal.sync_if_due()
                self._housekeeping()
            except Exception:
                self.metrics.inc("reports_writer_errors")
                log.exception("field-report writer failed on a batch of %d items", len(batch))
            if stop:
                return

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        waits = [
            max(self._next_control - now, 0.0),
            max(self._next_compaction - now, 0.0),
        ]
        sync_wait = self.wal.seconds_until_sync_due()
        if sync_wait is not None:
            waits.append(sync_wait)
        return max(min(waits), 0.001)

    def _process(self, batch: Sequence[Any]) -> None:
        pending: list[_Pending] = []
        for item in batch:
            kind, value = item
            if kind == "call":
                self._append(pending)
                pending = []
                value()
            elif kind == "command":
                pending.extend(self._open_window(value))
            elif kind == "epoch":
                pending.extend(self._epoch_end(value))
            elif kind == "event":
                pending.extend(self._event(value))
            elif kind == "run_end":
                pending.extend(self._run_end(value))
        self._append(pending)

    def _open_window(self, decision: Decision) -> list[_Pending]:
        if decision.report_id in self.tracker or self.book.has(decision.report_id):
            self.metrics.inc("reports_duplicate_decisions")
            return []
        window = self.tracker.open(decision, _UNASSIGNED)
        assert window is not None
        self.metrics.inc("reports_windows_opened")

        def assign(seq: int) -> None:
            window.opened_seq = seq

        return [_Pending(Kind.OPEN, records.dump(decision), _NORMAL, decision.report_id, assign)]

    def _epoch_end(self, end: EpochEnd) -> list[_Pending]:
        watched = self.tracker.seeds_watched(end.training_run_id)
        if self.tracker.min_open_seq(end.training_run_id) is None:
            return []
        trimmed = replace(end, seeds={k: v for k, v in end.seeds.items() if k in watched})
        closed = self.tracker.epoch_end(end)
        epoch = _Pending(Kind.EPOCH, records.dump(trimmed), _NORMAL, end.training_run_id)
        return [epoch, *self._reports(closed)]

    def _event(self, event: ObservedEvent) -> list[_Pending]:
        if self.tracker.min_open_seq(event.training_run_id) is None:
            return []
        self.tracker.event(event)
        body = records.dump(event)
        return [_Pending(Kind.EVENT, body, event.priority, event.training_run_id)]

    def _run_end(self, run_end: RunEnd) -> list[_Pending]:
        closed = self.tracker.run_end(run_end.training_run_id)
        if not closed:
            return []
        marker = _Pending(Kind.RUN_END, records.dump(run_end), _NORMAL, run_end.training_run_id)
        return [marker, *self._reports(closed)]

    def _reports(self, closed: Sequence[Window]) -> list[_Pending]:
        out = []
        for window in closed:
            report, priority = build_report(window, self.settings.windows, self._wall_ns())
            payload = report.SerializeToString()
            self.metrics.inc(
                "reports_windows_closed", outcome=pb.FieldReportOutcome.Name(report.outcome)
            )

            def add(seq: int, report: pb.FieldReport = report, payload: bytes = payload,
                    priority: int = priority) -> None:  # fmt: skip
                self.book.add(report, payload, priority, seq)

            out.append(_Pending(Kind.REPORT, payload, priority, report.report_id, add))
        return out

    def _append(self, pending: Sequence[_Pending]) -> None:
        """Append records, retrying an IO error until it succeeds: the writer waits
        (and the queue fills, counted), the records are not lost."""
        if not pending:
            return
        items = [(p.kind.value, p.body, p.priority) for p in pending]

        def registered(seqs: list[int]) -> None:
            self.state.register((seq, p.kind, p.key) for seq, p in zip(seqs, pending, strict=True))
            for seq, p in zip(seqs, pending, strict=True):
                if p.then is not None:
                    p.then(seq)

        backoff = Backoff(WRITE_RETRY_BASE_S, self.settings.write_retry_backoff_max_ms / 1000.0)
        while True:
            try:
                self.wal.append_many(items, then=registered)
                break
            except OSError:
                self.metrics.inc("reports_wal_write_errors")
                delay_s = backoff.next_s()
                log.exception("write-ahead log append failed; retrying in %.2fs", delay_s)
                time.sleep(delay_s)
        self.metrics.inc("reports_written", sum(p.kind is Kind.REPORT for p in pending))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_control:
            self._next_control = now + self.settings.control_poll_interval_ms / 1000.0
            self._handle_retry_requests()
            for state, count in self.book.counts().items():
                self.metrics.set_gauge("reports", count, state=state.value)
            self.metrics.set_gauge("reports_windows_open", len(self.tracker))
            self.metrics.set_gauge("reports_queue_depth", self._queue.qsize())
        if now >= self._next_compaction:
            self._next_compaction = now + self.settings.compaction_interval_s
            self._compact()

    # ------------------------------------------------------ delivery side

    def record_acks(self, acks: Sequence[Ack]) -> int:
        """Append ACK records for reports not yet acknowledged (blocking: run it in a
        worker thread); returns how many reports it retired."""
        fresh = [
            a for a in acks if self.book.state_of(a.report_id) not in (None, ReportState.ACKED)
        ]
        if not fresh:
            return 0
        retired = 0

        def registered(seqs: list[int]) -> None:
            nonlocal retired
            self.state.register(
                (seq, Kind.ACK, a.report_id) for seq, a in zip(seqs, fresh, strict=True)
            )
            for seq, ack in zip(seqs, fresh, strict=True):
                retired += self.book.apply_ack(ack, seq)

        items = [(Kind.ACK.value, records.dump(a), _NORMAL) for a in fresh]
        self.wal.append_many(items, then=registered)
        self.metrics.inc("reports_acked", retired)
        return retired

    def park(self, entries: Sequence[ReportEntry]) -> None:
        """Park reports out of attempts: kept in the log, counted, listed; retried on
        command (blocking: run it in a worker thread)."""
        parks = [Park(e.report_id, e.attempts) for e in entries]
        if not parks:
            return
        parked: list[Park] = []

        def registered(seqs: list[int]) -> None:
            self.state.register(
                (seq, Kind.PARK, p.report_id) for seq, p in zip(seqs, parks, strict=True)
            )
            parked.extend(
                p for seq, p in zip(seqs, parks, strict=True) if self.book.apply_park(p, seq)
            )

        self.wal.append_many(
            [(Kind.PARK.value, records.dump(p), _NORMAL) for p in parks], then=registered
        )
        self.metrics.inc("reports_parked", len(parked))
        for park in parked:
            log.warning(
                "field report %s parked after %d unacknowledged publishes; "
                "`tamiyo-bus reports retry %s` retries it",
                park.report_id, park.attempts, park.report_id,
            )  # fmt: skip

    def _handle_retry_requests(self) -> None:
        requests = pending_requests(self.settings.wal_dir)
        if not requests:
            return
        targets: list[str] = []
        for path in requests:
            if path.name == ALL:
                targets.extend(e.report_id for e in self.book.entries(ReportState.PARKED))
            else:
                targets.append(path.name)
        unparks = []
        for report_id in dict.fromkeys(targets):
            state = self.book.state_of(report_id)
            if state is ReportState.PARKED:
                unparks.append(Unpark(report_id, "operator"))
            elif state is ReportState.PENDING:
                self.book.expedite(report_id)
                self.metrics.inc("reports_retry_requested")
            else:
                self.metrics.inc("reports_retry_ignored")
                log.warning("retry request for %s ignored: report is %s", report_id, state)
        pending = [
            _Pending(Kind.UNPARK, records.dump(u), _NORMAL, u.report_id, partial(self._unparked, u))
            for u in unparks
        ]
        self._append(pending)
        for path in requests:
            path.unlink(missing_ok=True)

    def _unparked(self, unpark: Unpark, seq: int) -> None:
        if self.book.apply_unpark(unpark, seq):
            self.metrics.inc("reports_retry_requested")
            log.info("field report %s unparked on request: publishing again", unpark.report_id)

    # ------------------------------------------------------------ compaction

    def _compact(self) -> None:
        stats = self.wal.compact(
            lambda seq, elsewhere: self.state.is_live(seq, self._wall_ns(), elsewhere),
            rewrite_ratio=self.settings.compaction_rewrite_ratio,
        )
        self.state.removed(stats.removed_seqs)
        if stats.deleted or stats.rewritten:
            log.info(
                "write-ahead log compacted: %d segments deleted, %d rewritten (%d records kept)",
                stats.deleted, stats.rewritten, stats.copied,
            )  # fmt: skip

    def _recover(self) -> None:
        """Replay the log; then report the windows a crash closed unreported."""
        recovered = self.wal.recovered
        self._append(self._reports(self.state.replay(recovered.records, self.metrics)))
        if recovered.records:
            counts = self.book.counts()
            log.info(
                "field-report log recovered: %d records, %d open windows, %d pending, "
                "%d parked, %d acked; %d corrupt regions skipped",
                len(recovered.records), len(self.tracker), counts[ReportState.PENDING],
                counts[ReportState.PARKED], counts[ReportState.ACKED], recovered.corrupt_regions,
            )  # fmt: skip

"""The state a field-report log describes, rebuilt by replaying it, and which of its
records are still needed.

Used by the log's owner (the FieldReporter, which then keeps it in step with every
append) and, read-only, by the CLI.

A record is live, and compaction keeps it, while:

- OPEN: its window is still open;
- EPOCH, EVENT, RUN_END: a window of the same run opened before it is still open;
- REPORT: its report is unacknowledged, or was acknowledged less than `retention_s`
  ago, or its window's OPEN record is stored in another segment (a replay must never
  reopen a window whose report it cannot see);
- ACK: its report's REPORT record is live or stored in another segment (a replay
  must never see a report without the ack that retired it);
- PARK, UNPARK: it is the latest of its unacknowledged report.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence

import orjson
from google.protobuf.message import DecodeError

from leyline_pb import leyline_pb2 as pb
from oona.metrics import BusMetrics
from tamiyo_bus.reports import records
from tamiyo_bus.reports.book import ReportBook, RetryPolicy
from tamiyo_bus.reports.records import Kind
from tamiyo_bus.reports.wal import Record
from tamiyo_bus.reports.windows import Window, WindowTracker

log = logging.getLogger(__name__)

_UNDECODABLE = (ValueError, TypeError, KeyError, orjson.JSONDecodeError, DecodeError)


class LogState:
    """Open windows (`tracker`, owned by one thread), reports (`book`, thread-safe),
    and an index of stored records by sequence number."""

    def __init__(self, retry: RetryPolicy, retention_s: float) -> None:
        self.book = ReportBook(retry)
        self.tracker = WindowTracker()
        self.retention_s = retention_s
        self._lock = threading.Lock()
        self._index: dict[int, tuple[Kind, str]] = {}
        self._open_seqs: dict[str, int] = {}

    def register(self, known: Iterable[tuple[int, Kind, str]]) -> None:
        """Index stored records by number: (seq, kind, report id or run id)."""
        with self._lock:
            for seq, kind, key in known:
                self._index[seq] = (kind, key)
                if kind is Kind.OPEN:
                    self._open_seqs[key] = seq

    def removed(self, seqs: Iterable[int]) -> None:
        """Records compaction removed from the log; a report goes with its REPORT."""
        with self._lock:
            gone = [(seq, self._index.pop(seq, None)) for seq in seqs]
            for seq, known in gone:
                if known is None or known[0] is not Kind.OPEN:
                    continue
                if self._open_seqs.get(known[1]) == seq:
                    del self._open_seqs[known[1]]
        for seq, known in gone:
            if known is not None and known[0] is Kind.REPORT:
                self.book.forget(known[1], seq)

    def is_live(self, seq: int, now_ns: int, elsewhere: Callable[[int], bool]) -> bool:
        """Whether compaction must keep record `seq` of the segment at hand (the rules
        are in the module doc); `elsewhere(other)`: record `other` is stored in
        another segment, so it stays when this segment goes."""
        with self._lock:
            known = self._index.get(seq)
            if known is None:
                return False
            kind, key = known
            open_seq = self._open_seqs.get(key)
        if kind is Kind.OPEN:
            return key in self.tracker
        if kind in (Kind.EPOCH, Kind.EVENT, Kind.RUN_END):
            oldest = self.tracker.min_open_seq(key)
            return oldest is not None and oldest < seq
        if kind is Kind.REPORT:
            if open_seq is not None and elsewhere(open_seq):
                return True
            return self.book.report_live(key, seq, now_ns, self.retention_s)
        if kind is Kind.ACK:
            report_seq = self.book.ack_of(key, seq)
            if report_seq is None:
                return False
            return elsewhere(report_seq) or self.book.report_live(
                key, report_seq, now_ns, self.retention_s
            )
        return self.book.park_live(key, seq)

    # -------------------------------------------------------------- replay

    def replay(self, log_records: Sequence[Record], metrics: BusMetrics) -> list[Window]:
        """Apply records in order; returns windows that closed but whose REPORT is not
        in the log (the process died between the two), to be reported now."""
        closing: dict[str, Window] = {}
        for record in log_records:
            try:
                self._replay_one(record, closing)
            except _UNDECODABLE as exc:
                metrics.inc("reports_undecodable_records")
                log.warning("write-ahead log record %d skipped: %s", record.seq, exc)
        return list(closing.values())

    def _replay_one(self, record: Record, closing: dict[str, Window]) -> None:
        kind = Kind(record.kind)
        body = record.body
        key: str
        if kind is Kind.OPEN:
            decision = records.load_decision(body)
            key = decision.report_id
            if not self.book.has(key):
                self.tracker.open(decision, record.seq)
        elif kind is Kind.EPOCH:
            end = records.load_epoch(body)
            key = end.training_run_id
            closing.update((w.decision.report_id, w) for w in self.tracker.epoch_end(end))
        elif kind is Kind.EVENT:
            event = records.load_event(body)
            key = event.training_run_id
            self.tracker.event(event)
        elif kind is Kind.RUN_END:
            key = records.load_run_end(body).training_run_id
            closing.update((w.decision.report_id, w) for w in self.tracker.run_end(key))
        elif kind is Kind.REPORT:
            report = pb.FieldReport.FromString(body)
            key = report.report_id
            self.tracker.forget(key)
            closing.pop(key, None)
            self.book.add(report, body, record.priority, record.seq)
        elif kind is Kind.ACK:
            ack = records.load_ack(body)
            key = ack.report_id
            self.book.apply_ack(ack, record.seq)
        elif kind is Kind.PARK:
            park = records.load_park(body)
            key = park.report_id
            self.book.apply_park(park, record.seq)
        else:
            unpark = records.load_unpark(body)
            key = unpark.report_id
            self.book.apply_unpark(unpark, record.seq)
        self.register([(record.seq, kind, key)])
